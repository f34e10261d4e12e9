"""Training checkpoints that resume bit-for-bit: weights, optimizer, scheduler, RNG and data position.

Tensors go to safetensors, everything else to JSON: nothing is unpickled on load, so a checkpoint
from an untrusted place cannot run code. Each checkpoint is written to a temp dir and renamed.
Weights and optimizer state are full tensors keyed by parameter name whether training ran on one
process, under DDP or under FSDP (shards are gathered on rank 0 and re-split on load).
"""
from __future__ import annotations

import json
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from alignpipe.train.sharding import full_state, load_full_state

CKPT_PREFIX = "step-"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, slots in state["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in slots.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.contiguous()
                meta["state"][str(pid)][k] = "__tensor__"
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state = {}
    for pid, slots in meta["state"].items():
        state[pid] = {k: (tensors[f"{pid}.{k}"] if v == "__tensor__" else v) for k, v in slots.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    root: Path, step: int, model: torch.nn.Module, optimizer, scheduler, extra: dict[str, Any], rank: int = 0, keep: int = 2
) -> Path:
    """Every rank calls this (FSDP gathers shards); rank 0 writes weights/optimizer/state and its RNG.
    The other ranks add their RNG files with save_rank_rng once the directory exists."""
    final = root / f"{CKPT_PREFIX}{step:08d}"
    tmp = root / f".tmp-{step:08d}-{uuid.uuid4().hex[:8]}"
    rng_tensors, rng_meta = _rng_state()
    weights, optim_state = full_state(model, optimizer)
    if rank == 0:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"))  # trainable parameters; tied weights once
        opt_tensors, opt_meta = _flatten_optimizer(optim_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, "scheduler": sched, "extra": extra}))
        save_file(rng_tensors, str(tmp / "rng-0.safetensors"))
        (tmp / "rng-0.json").write_text(json.dumps(rng_meta))
        tmp.rename(final)
        for old in sorted(root.glob(f"{CKPT_PREFIX}*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_rank_rng(ckpt: Path, rank: int) -> None:
    """Non-zero ranks add their RNG state once rank 0 has published the checkpoint directory."""
    tensors, meta = _rng_state()
    save_file(tensors, str(ckpt / f"rng-{rank}.safetensors"))
    (ckpt / f"rng-{rank}.json").write_text(json.dumps(meta))


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(root.glob(f"{CKPT_PREFIX}*")) if root.exists() else []
    return found[-1] if found else None


def load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer, scheduler, rank: int = 0) -> dict[str, Any]:
    """Restore everything saved by save_checkpoint; returns the `extra` dict (data position etc.)."""
    weights = load_file(str(ckpt / "model.safetensors"))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"{ckpt}: checkpoint lacks parameters {missing[:3]} (different model or LoRA setting?)")
    state = json.loads((ckpt / "state.json").read_text())
    optim_state = _unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")), state["optimizer"])
    load_full_state(model, optimizer, weights, optim_state)
    sched = scheduler.state_dict()
    sched.update(state["scheduler"])
    scheduler.load_state_dict(sched)
    rng_file = ckpt / f"rng-{rank}.safetensors"
    if not rng_file.exists():
        rng_file = ckpt / "rng-0.safetensors"
    _set_rng_state(load_file(str(rng_file)), json.loads(rng_file.with_suffix(".json").read_text()))
    return state["extra"]
