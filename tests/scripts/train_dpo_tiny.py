"""Run by tests under `accelerate launch`: trains the tiny model and writes the loss history (rank 0).

    train_dpo_tiny.py MODEL_DIR MICRO_BATCH OUT_JSON [--lora] [--adapter-reference] [--gradient-checkpointing]
        [--checkpoint-dir DIR --checkpoint-every N [--stop-after N]] [--publish DIR]

--stop-after N exits every process right after step N (as a killed run would, minus the kill);
--publish writes the model as a training stage does (alignpipe.stages.common.publish_training).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from torch.distributed.fsdp import FSDPModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _training_fixtures import dpo_config, objective, preference_items  # noqa: E402

from alignpipe.models import bind_process_device, load_causal_lm, load_tokenizer  # noqa: E402
from alignpipe.stages.common import apply_lora, publish_training  # noqa: E402
from alignpipe.train.loop import train  # noqa: E402
from pipeline_config.schema import LoraConfig  # noqa: E402

LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])


class Stop(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("micro", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--adapter-reference", action="store_true")
    ap.add_argument("--checkpoint-dir", type=Path)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--stop-after", type=int)
    ap.add_argument("--publish", type=Path)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()

    device = bind_process_device()
    tok = load_tokenizer(args.model_dir)
    model = load_causal_lm(args.model_dir).to(device)
    items = preference_items(model, tok)
    extra = {"reference": "adapter_disabled"} if args.adapter_reference else {}
    extra["gradient_checkpointing"] = args.gradient_checkpointing
    if args.lora:
        torch.manual_seed(0)  # the same LoRA init on every process and in every run
        model = apply_lora(model, LORA)
        extra["lora"] = LORA.model_dump()
    cfg = dpo_config(micro_batch_size=args.micro, epochs=1, optimizer="adamw", checkpoint_every=args.checkpoint_every, **extra)

    def stop(step, metrics):
        if step == args.stop_after:
            raise Stop

    stopped = False
    try:
        result = train(model, items, objective(model, tok, cfg), cfg, checkpoint_dir=args.checkpoint_dir, callbacks=[stop])
        units = sorted({type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)})
        if args.publish:
            publish_training(args.publish, model, tok, result.history, {"final_loss": result.final["loss"]})
    except Stop:
        stopped = True
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = torch.distributed.get_rank() if world > 1 else 0
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # gloo aborts at exit without it
    if rank == 0 and not stopped:
        report = {"world": world, "loss": [h["loss"] for h in result.history], "history": result.history}
        args.out.write_text(json.dumps({**report, "resumed_from": result.resumed_from, "fsdp_units": units}))


if __name__ == "__main__":
    main()
