"""The one training loop behind SFT and DPO, readable top to bottom.

An `Objective` says how to batch items and what loss a batch has; the loop owns everything else:
data order, accumulation, several processes (accelerate's DDP, or FSDP2 when the accelerate config
asks for it: alignpipe.train.sharding), clipping, the schedule, metrics, and checkpoints that
resume to the same weights as an uninterrupted run.

Loss scaling: the objective returns the *sum* of per-unit losses (units: pairs for DPO, completion
tokens for SFT). Every process knows the whole global batch, so each scales by world/N_global before
backward; DDP's (or FSDP's) gradient averaging then yields exactly the mean over the global batch,
whatever the split into processes and micro-batches.

As in the DPO paper's trainers, dropout is off while training (alignpipe.train.dropout; LoRA's own
dropout, an explicit setting, stays on, and the loop says so), and the
forward runs in the regime the reference log-probs were computed in (alignpipe.train.precision),
so at step 0 the policy equals the reference. Backward runs outside autocast.
"""
from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from alignpipe.logprobs import SequenceScorer
from alignpipe.train import sharding
from alignpipe.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_rank_rng
from alignpipe.train.dropout import dropout_disabled
from alignpipe.train.optim import make_optimizer, warmup_then_constant
from alignpipe.train.precision import autocast, check_launch_precision
from pipeline_config.schema import TrainConfig

log = logging.getLogger(__name__)


class Objective(Protocol):
    def units(self, item: Any) -> float:
        """This item's share of the loss normalizer."""

    def collate(self, items: Sequence[Any]):
        """Items -> a LogpBatch (or anything with .to(device), .real_tokens, .padded_tokens)."""

    def __call__(self, scorer: torch.nn.Module, batch, items: Sequence[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """(sum of losses over the batch's units, sums of metrics over units)."""


StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: Optional[int] = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def make_accelerator(precision: str = "auto"):
    """Processes, devices and DDP; precision is the loop's own (see alignpipe.train.precision)."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    check_launch_precision("cuda" if cuda else "cpu", precision)
    return Accelerator(cpu=not cuda, mixed_precision="no")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a pure function of (seed, epoch), so resuming needs no sampler state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def _memory_mb(device: torch.device) -> float:
    """Peak CUDA allocation, or on CPU the process's resident memory now (the loop keeps the max:
    the process-lifetime peak would include whatever earlier stages of the pipeline loaded)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _plan(cfg: TrainConfig, n_items: int, world: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, items per process per step), or a clear error."""
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise ValueError(
            f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size x processes "
            f"({cfg.micro_batch_size} x {world})"
        )
    steps_per_epoch = n_items // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n_items} training items are fewer than batch_size {cfg.batch_size}")
    total = cfg.max_steps if cfg.max_steps else cfg.epochs * steps_per_epoch
    return steps_per_epoch, total, cfg.batch_size // world


def train(
    lm: torch.nn.Module,
    items: Sequence[Any],
    objective: Objective,
    cfg: TrainConfig,
    *,
    checkpoint_dir: Optional[Path] = None,
    callbacks: Sequence[StepCallback] = (),
    desc: str = "training",
    say: Callable[[str], None] = lambda line: None,
    precision: str = "auto",
) -> TrainResult:
    """Train `lm` on `items`. precision: model.dtype, the autocast of every forward (see precision.py)."""
    accelerator = make_accelerator(precision)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    steps_per_epoch, total_steps, per_process = _plan(cfg, len(items), world)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.train()
    fsdp = sharding.fsdp_settings()  # from the accelerate config (infra/accelerate/fsdp.yaml)
    if fsdp and world == 1:
        log.info("FSDP with one process: nothing to shard, training unsharded")
        fsdp = None
    if fsdp:
        sharding.shard(lm, fsdp)  # before the optimizer: parameters become this rank's shards
    optimizer = make_optimizer(lm.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
    scheduler = warmup_then_constant(optimizer, cfg.warmup_steps)
    scorer = SequenceScorer(lm) if fsdp else accelerator.prepare(SequenceScorer(lm))  # DDP when world > 1
    params = [p for p in lm.parameters() if p.requires_grad]

    result = TrainResult(steps=total_steps)
    start_step = 0
    ckpt = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None:
        extra = load_checkpoint(ckpt, lm, optimizer, scheduler, rank)
        start_step, result.history, result.resumed_from = extra["step"], extra["history"], extra["step"]
        log.info("resumed from %s (step %d of %d)", ckpt, start_step, total_steps)
        if rank == 0:
            say(f"resumed from step {start_step} of {total_steps}")

    started = time.perf_counter()
    peak_mb = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=total_steps, initial=start_step, desc=desc, disable=rank != 0, unit="step")
    with dropout_disabled(lm) as lora_dropout:
        if lora_dropout and rank == 0:
            say(f"LoRA dropout {lora_dropout:g} stays on while training (lora.dropout); every other dropout is off")
        for step in range(start_step, total_steps):
            epoch, k = divmod(step, steps_per_epoch)
            global_batch = epoch_order(len(items), cfg.seed, epoch)[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            n_units = sum(objective.units(items[i]) for i in global_batch)
            mine = sorted(global_batch[rank * per_process : (rank + 1) * per_process], key=lambda i: -len(items[i]))
            micro = [mine[s : s + cfg.micro_batch_size] for s in range(0, per_process, cfg.micro_batch_size)]

            t0 = time.perf_counter()
            sums: dict[str, float] = defaultdict(float)
            for j, idx in enumerate(micro):
                chunk = [items[i] for i in idx]
                batch = objective.collate(chunk).to(device)
                sync = nullcontext() if j == len(micro) - 1 else accelerator.no_sync(scorer)
                with sync:
                    with autocast(device, precision):
                        loss_sum, metric_sums = objective(scorer, batch, chunk)
                    accelerator.backward(loss_sum * (world / n_units))
                sums["loss"] += float(loss_sum.detach())
                for name, value in metric_sums.items():
                    sums[name] += float(value)
                sums["_tokens"] += batch.real_tokens
                sums["_padded"] += batch.padded_tokens
            grad_norm = sharding.clip_grad_norm(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            names = sorted(sums)
            totals = torch.tensor([sums[n] for n in names], dtype=torch.float64, device=device)
            if world > 1:
                totals = accelerator.reduce(totals, reduction="sum")
            totals = dict(zip(names, totals.tolist()))
            seconds = time.perf_counter() - t0
            peak_mb = max(peak_mb, _memory_mb(device))
            metrics = {n: v / n_units for n, v in totals.items() if not n.startswith("_")}
            metrics.update(
                {
                    "step": step + 1,
                    "epoch": epoch + (k + 1) / steps_per_epoch,
                    "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": totals["_tokens"] / seconds,
                    "seconds_per_step": seconds,
                    "padding_fraction": 1 - totals["_tokens"] / totals["_padded"],
                    "peak_memory_mb": peak_mb,
                    "processes": world,
                    "fsdp": float(fsdp is not None),
                }
            )
            result.history.append(metrics)
            done = step + 1
            if checkpoint_dir and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total_steps:
                path = save_checkpoint(
                    checkpoint_dir, done, lm, optimizer, scheduler, {"step": done, "history": result.history}, rank
                )
                accelerator.wait_for_everyone()
                if rank != 0:
                    save_rank_rng(path, rank)
                accelerator.wait_for_everyone()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            for cb in callbacks:
                cb(done, metrics)
    bar.close()
    result.seconds = time.perf_counter() - started
    lm.eval()
    return result
