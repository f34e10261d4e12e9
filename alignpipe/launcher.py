"""Running a training stage in several processes: `accelerate launch ... -m alignpipe.stages.launch`.

The child (alignpipe/stages/launch.py) receives:
    --stage NAME --config SLICE_JSON --out DIR --inputs INPUTS_JSON --resume DIR
    --metrics-log FILE   main process appends {"step": int|null, "metrics": {...}} lines
    --result FILE        main process writes the headline metrics dict (JSON) at the end
    --say-log FILE       main process appends console lines ("dpo: resumed from step 10 of 30")
Step metrics and console lines are tailed into this process's sink and console while it runs.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from alignpipe.cache import validate_metrics
from alignpipe.stages.base import MetricsSink, StageContext, StageSpec

log = logging.getLogger(__name__)

# Stages whose work is data-parallel training; they go through `accelerate launch` when
# orchestration.num_processes > 1. The others (sampling, scoring, reports) run in-process.
DISTRIBUTED_STAGES: frozenset[str] = frozenset({"sft", "dpo"})


@dataclass(frozen=True)
class AccelerateLauncher:
    num_processes: int
    config_file: Optional[str] = None
    accelerate: tuple[str, ...] = (sys.executable, "-m", "accelerate.commands.launch")
    module: str = "alignpipe.stages.launch"
    poll_s: float = 0.5
    stages: frozenset[str] = DISTRIBUTED_STAGES

    @classmethod
    def from_settings(cls, num_processes: int, config_file: Optional[str]) -> Optional["AccelerateLauncher"]:
        """orchestration.num_processes / accelerate_config -> a launcher, or None for in-process."""
        if num_processes <= 1:
            if config_file:
                raise ValueError("orchestration.accelerate_config: only used with orchestration.num_processes > 1")
            return None
        if config_file and not Path(config_file).is_file():
            raise ValueError(f"orchestration.accelerate_config: {config_file}: file not found")
        return cls(num_processes, config_file)

    def handles(self, spec: StageSpec) -> bool:
        return spec.name in self.stages

    def command(self, stage: str, ctx: StageContext, metrics_log: Path, result: Path, say_log: Path) -> list[str]:
        cmd = [*self.accelerate, "--num_processes", str(self.num_processes)]
        if self.config_file:
            cmd += ["--config_file", str(self.config_file)]
        else:  # torchrun workers; without it accelerate starts a single process (it expects mpirun on CPU)
            cmd += ["--multi_gpu"]
        cmd += ["-m", self.module, "--stage", stage, "--config", ctx.config.model_dump_json()]
        cmd += ["--out", str(ctx.out_dir), "--inputs", json.dumps({k: str(v) for k, v in ctx.inputs.items()})]
        if ctx.resume_dir is not None:
            cmd += ["--resume", str(ctx.resume_dir)]
        cmd += ["--metrics-log", str(metrics_log), "--result", str(result), "--say-log", str(say_log)]
        return cmd

    def run(self, spec: StageSpec, ctx: StageContext) -> dict[str, float]:
        scratch = Path(tempfile.mkdtemp(prefix=f"alignpipe-{spec.name}-"))
        try:
            metrics_log, result, say_log = scratch / "metrics.jsonl", scratch / "result.json", scratch / "say.log"
            metrics_log.touch()
            say_log.touch()
            cmd = self.command(spec.name, ctx, metrics_log, result, say_log)
            log.info("launching %s on %d processes", spec.name, self.num_processes)
            rc = _run_streaming(cmd, metrics_log, say_log, ctx.sink, ctx.say, self.poll_s)
            if rc != 0:
                raise RuntimeError(f"accelerate launch of stage '{spec.name}' exited with code {rc}")
            if not result.exists():
                raise RuntimeError(f"accelerate launch of stage '{spec.name}' wrote no result file")
            return validate_metrics(spec.name, json.loads(result.read_text()))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _complete_lines(fh, pending: str) -> tuple[list[str], str]:
    pending += fh.read()
    *lines, pending = pending.split("\n")
    return [line for line in lines if line.strip()], pending


def _run_streaming(cmd: list[str], metrics_log: Path, say_log: Path, sink: MetricsSink, say: Callable[[str], None], poll_s: float) -> int:
    proc = subprocess.Popen(cmd, start_new_session=True)  # own group: we stop the whole launch
    pending_m = pending_s = ""

    def forward(fm, fs, final: bool = False) -> None:
        nonlocal pending_m, pending_s
        lines, pending_m = _complete_lines(fm, pending_m + ("\n" if final else ""))
        for line in lines:
            event = json.loads(line)
            sink.log_metrics(event["metrics"], event.get("step"))
        lines, pending_s = _complete_lines(fs, pending_s + ("\n" if final else ""))
        for line in lines:
            say(line)

    try:
        with open(metrics_log) as fm, open(say_log) as fs:
            while proc.poll() is None:
                forward(fm, fs)
                time.sleep(poll_s)
            forward(fm, fs, final=True)
        return proc.returncode
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        raise
