"""DPO training of the SFT model on the reference stage's tokenized pairs and stored log-probs.

With evaluate.checkpoints = N the policy's trainable weights at every N steps are kept too (copied
from the training checkpoint of that step into the stable resume dir, so a resumed run keeps the
ones it already made), and published under snapshots/ for the reward/KL frontier.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch

from alignpipe.attention import check_trainable
from alignpipe.dpo.objective import DPOObjective, PreferenceItem
from alignpipe.dpo.scoring import pair_layout
from alignpipe.models import use_attention
from alignpipe.stages.artifacts import REFERENCE_FILE, dataset_record, file_digest, read_reference, write_datasets, write_snapshots
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.common import HistoryLogger, apply_lora, is_main_process, load_trainable, publish_training
from alignpipe.train.checkpoint import CKPT_PREFIX
from alignpipe.train.loop import train
from alignpipe.train.summary import tail_mean
from pipeline_config.schema import DPOConfig
from pipeline_config.slices import From, StageConfig


class DPOSlice(StageConfig):
    dpo: Annotated[DPOConfig, From("dpo")]
    dtype: Annotated[Literal["auto", "float32", "bfloat16"], From("model.dtype")]  # the training autocast
    attention: Annotated[Literal["sdpa", "flex_attention", "eager"], From("model.attention")]
    snapshot_every: Annotated[int, From("evaluate.checkpoints")]  # keep the policy every N steps (0: no)


class SnapshotKeeper:
    """A step callback: at every `every` steps, copy the training checkpoint's trainable weights
    (written just before callbacks run) to <resume_dir>/snapshots/, which survives a kill."""

    def __init__(self, resume_dir, every: int):
        self.every = every
        self.dir = resume_dir / "snapshots" if resume_dir is not None and every else None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self.dir is None or step % self.every or not is_main_process():
            return
        source = self.dir.parent / f"{CKPT_PREFIX}{step:08d}" / "model.safetensors"
        if source.exists():  # the last step has no checkpoint: it is the published model
            import shutil

            self.dir.mkdir(exist_ok=True)
            shutil.copyfile(source, self.dir / f"{step:08d}.tmp")
            (self.dir / f"{step:08d}.tmp").rename(self.dir / f"{step:08d}.safetensors")

    def files(self) -> dict[int, object]:
        if self.dir is None or not self.dir.exists():
            return {}
        return {int(p.stem): p for p in sorted(self.dir.glob("*.safetensors"))}


def run(ctx: StageContext) -> dict[str, float]:
    config: DPOSlice = ctx.config
    dcfg = config.dpo
    say = lambda line: ctx.say(f"dpo: {line}")  # noqa: E731
    model, tok = load_trainable(ctx.inputs["sft"])
    use_attention(model, config.attention)
    check_trainable(model)
    ref = read_reference(ctx.inputs["reference"])
    items = [PreferenceItem(p, float(c), float(r)) for p, c, r in zip(ref.pairs, ref.chosen_logps, ref.rejected_logps)]
    if ref.prefix_sharing is None:
        raise ValueError("dpo: the reference output records no prefix_sharing decision (written by an older alignpipe): recompute the reference stage")
    sharing = ref.prefix_sharing  # decided once by the reference stage, in the regime its log-probs were computed in
    torch.manual_seed(dcfg.seed)  # LoRA's initial weights: reproducible like everything else
    model = apply_lora(model, dcfg.lora)
    if config.snapshot_every and ctx.resume_dir is None:
        raise ValueError("evaluate.checkpoints: the DPO stage was given no resume dir to keep snapshots in")
    snapshots = SnapshotKeeper(ctx.resume_dir, config.snapshot_every)
    layout = pair_layout(model, sharing, dcfg.packing)
    result = train(
        model,
        items,
        DPOObjective(dcfg, layout.collator(tok.pad_token_id)),
        dcfg,
        checkpoint_dir=ctx.resume_dir,
        callbacks=[HistoryLogger(ctx.sink, "dpo"), snapshots],
        desc="DPO",
        say=say,
        precision=config.dtype,
    )
    metrics = {
        "final_loss": tail_mean(result.history, "loss"),  # the same "final" as the report's
        "final_reward_accuracy": tail_mean(result.history, "rewards/accuracies"),
        "final_reward_margin": tail_mean(result.history, "rewards/margins"),
        "steps": float(result.steps),
        "seconds": result.seconds,
        "tokens_per_s": sum(h["tokens_per_s"] for h in result.history) / len(result.history),
        "peak_memory_mb": max(h["peak_memory_mb"] for h in result.history),
        "padding_fraction": sum(h["padding_fraction"] for h in result.history) / len(result.history),
        **layout.metrics(),  # prefix_sharing, packing, attention_{concatenated,dense,flex}
    }
    publish_training(ctx.out_dir, model, tok, result.history, metrics)
    tokens = ctx.inputs["reference"] / REFERENCE_FILE
    write_datasets(ctx.out_dir, [dataset_record("preference-pairs-tokenized", file_digest(tokens), str(tokens), len(items), "training", "stage")])
    if config.snapshot_every and is_main_process():
        write_snapshots(ctx.out_dir, snapshots.files(), dcfg.lora.model_dump(mode="json") if dcfg.lora else None)
    return metrics


SPEC = StageSpec(
    name="dpo",
    upstream=("sft", "reference"),
    config=DPOSlice,
    run=run,
    artifacts=("history.jsonl", "metrics.json"),
    uses_gpu=True,
)
