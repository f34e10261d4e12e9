"""Entry point for a training stage under `accelerate launch` (one copy per process).

    accelerate launch --num_processes N [--config_file F] -m alignpipe.stages.launch \\
        --stage dpo --config SLICE_JSON --out DIR --inputs INPUTS_JSON [--resume DIR] \\
        --metrics-log FILE --result FILE --say-log FILE

Every process runs the stage; the training loop shards the data and syncs gradients, and only the
main process writes outputs, streams step metrics to --metrics-log, console lines to --say-log and
the result to --result.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Mapping, Optional

import torch

from alignpipe.models import bind_process_device
from alignpipe.stages import get_stage
from alignpipe.stages.base import StageContext
from alignpipe.stages.common import is_main_process


class JsonlSink:
    """Appends {"step", "metrics"} lines that the parent process tails into MLflow."""

    def __init__(self, path: Path):
        self.path = path

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "metrics": dict(metrics)}) + "\n")


def _appender(path: Path):
    def say(line: str) -> None:
        if is_main_process():
            with open(path, "a") as f:
                f.write(line.replace("\n", " ") + "\n")

    return say


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True)
    ap.add_argument("--config", required=True, help="the stage's config slice as JSON")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--inputs", required=True, help="JSON: upstream stage -> output directory")
    ap.add_argument("--resume", type=Path)
    ap.add_argument("--metrics-log", required=True, type=Path)
    ap.add_argument("--result", required=True, type=Path)
    ap.add_argument("--say-log", required=True, type=Path)
    args = ap.parse_args(argv)
    bind_process_device()  # cuda:LOCAL_RANK before the stage loads anything (not every rank on GPU 0)

    spec = get_stage(args.stage)
    ctx = StageContext(
        config=spec.config.model_validate_json(args.config),
        out_dir=args.out,
        inputs={k: Path(v) for k, v in json.loads(args.inputs).items()},
        sink=JsonlSink(args.metrics_log),
        resume_dir=args.resume,
        say=_appender(args.say_log),
    )
    metrics = spec.run(ctx)
    if is_main_process():
        args.result.write_text(json.dumps(metrics))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # gloo aborts at interpreter exit without it


if __name__ == "__main__":
    main()
