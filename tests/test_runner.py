"""run_pipeline and the plan over fake stages: what runs, what is reused, and what is refused."""
from __future__ import annotations

import io
import json
import sys
import textwrap

import pytest
from rich.console import Console

from alignpipe.launcher import AccelerateLauncher
from alignpipe.pipeline import ConsoleReporter, StageFailed, run_pipeline, run_stage
from alignpipe.plan import PipelineError, StageCatalog, plan_pipeline
from alignpipe.stages import STAGE_ORDER
from stage_doubles import ORDER, calls, catalog, make_specs, tiny_config

DOWNSTREAM_OF_DPO = ["dpo", "evaluate", "ood", "report"]


def _quiet() -> ConsoleReporter:
    return ConsoleReporter(Console(file=io.StringIO()))


def _run(cfg, stages=None, rerun=(), fail=()):
    return run_pipeline(cfg, stages, rerun, catalog=catalog(fail), reporter=_quiet())


def _calls_since(cfg, before: int) -> list[str]:
    return calls(cfg)[before:]


def test_cache_hits_and_misses_follow_the_config(tmp_path):
    cfg = tiny_config(tmp_path)
    first = _run(cfg)
    assert first.executed == ORDER and calls(cfg) == ORDER

    second = _run(cfg)
    assert second.executed == [] and second.reused == ORDER
    assert calls(cfg) == ORDER  # nothing was called again
    assert [o.metrics for o in second.outcomes] == [o.metrics for o in first.outcomes]

    changed = tiny_config(tmp_path, dpo__beta=0.5)
    n = len(calls(cfg))
    third = _run(changed)
    assert third.executed == DOWNSTREAM_OF_DPO
    assert _calls_since(cfg, n) == DOWNSTREAM_OF_DPO
    assert third.outcome("dpo").metrics["beta_seen"] == 0.5
    assert third.outcome("dpo").key != first.outcome("dpo").key
    assert third.outcome("sft").key == first.outcome("sft").key
    # The old dpo output is still there: switching back is free.
    assert _run(cfg).executed == []


def test_rerun_forces_a_stage_and_everything_downstream(tmp_path):
    cfg = tiny_config(tmp_path)
    first = _run(cfg)
    n = len(calls(cfg))
    again = _run(cfg, rerun={"pairs"})
    assert again.executed == ["pairs", "reference", "dpo", "evaluate", "ood", "report"]
    assert _calls_since(cfg, n) == again.executed
    assert [o.key for o in again.outcomes] == [o.key for o in first.outcomes]  # same keys, new outputs


def test_single_stage_builds_only_missing_upstream(tmp_path):
    cfg = tiny_config(tmp_path)
    dpo = _run(cfg, stages=["dpo"])
    assert dpo.executed == ["sft", "pairs", "reference", "dpo"]
    evaluate = _run(cfg, stages=["evaluate"])
    assert evaluate.executed == ["evaluate"] and evaluate.reused == ["sft", "pairs", "reference", "dpo"]
    payload = json.loads((evaluate.outcome("evaluate").out_dir / "payload.json").read_text())
    assert payload["inputs"] == ["dpo", "sft"]
    assert payload["config"]["evaluate"]["n_prompts"] == cfg.evaluate.n_prompts
    assert set(payload["config"]) == {"evaluate", "run_dir"}  # the stage sees its slice, nothing else


def test_unknown_or_unloadable_stages_are_errors(tmp_path):
    cfg = tiny_config(tmp_path)
    with pytest.raises(PipelineError, match="unknown stage 'dop'"):
        plan_pipeline(cfg, ["dop"], catalog=catalog())
    with pytest.raises(PipelineError, match="--rerun bogus: unknown stage"):
        plan_pipeline(cfg, rerun=["bogus"], catalog=catalog())
    with pytest.raises(PipelineError, match="--rerun report: not part of this run"):
        plan_pipeline(cfg, ["dpo"], rerun=["report"], catalog=catalog())

    def load(name):
        raise ModuleNotFoundError(f"No module named 'alignpipe.stages.{name}_stage'")

    with pytest.raises(PipelineError, match="stage 'sft' could not be loaded: ModuleNotFoundError"):
        plan_pipeline(cfg, catalog=StageCatalog(["sft"], load))


def test_default_catalog_follows_the_stage_registry():
    assert StageCatalog.default().names == STAGE_ORDER


def test_a_failing_stage_publishes_nothing_and_stops_the_pipeline(tmp_path):
    cfg = tiny_config(tmp_path)
    with pytest.raises(StageFailed, match="stage 'dpo' failed: RuntimeError: dpo exploded on purpose \\(traceback: ") as failed:
        _run(cfg, fail={"dpo"})
    log_file = failed.value.detail.split("(traceback: ")[1].rstrip(")")
    assert "Traceback" in open(log_file).read() and "stage_doubles.py" in open(log_file).read()
    assert calls(cfg) == ["sft", "pairs", "reference", "dpo"]
    store = tmp_path / "store"
    assert not list((store / "dpo").glob("*/manifest.json"))
    assert not list((store / "dpo").glob(".tmp-*"))
    assert not (store / "evaluate").exists()
    # Fixed: the next run starts at dpo.
    n = len(calls(cfg))
    assert _run(cfg).executed == DOWNSTREAM_OF_DPO
    assert _calls_since(cfg, n) == DOWNSTREAM_OF_DPO


FAKE_LAUNCH = textwrap.dedent(
    """
    # Stands in for `python -m accelerate.commands.launch ... -m alignpipe.stages.launch ...`.
    import argparse, json, pathlib, sys
    argv = sys.argv[1:]
    launch, child = argv[: argv.index("-m")], argv[argv.index("-m") + 2 :]
    assert launch[:2] == ["--num_processes", "2"], launch
    p = argparse.ArgumentParser()
    for opt in ("--stage", "--config", "--out", "--inputs", "--resume", "--metrics-log", "--result", "--say-log"):
        p.add_argument(opt, required=True)
    a = p.parse_args(child)
    cfg = json.loads(a.config)
    inputs = json.loads(a.inputs)
    pathlib.Path(a.out, "policy.txt").write_text(f"beta={cfg['dpo']['beta']} from {sorted(inputs)}")
    with open(a.metrics_log, "a") as fh:
        for step in range(3):
            fh.write(json.dumps({"step": step, "metrics": {"train/loss": 1.0 / (step + 1)}}) + "\\n")
    with open(a.say_log, "a") as fh:
        fh.write("dpo: resumed from step 2 of 3\\n")
    pathlib.Path(a.result).write_text(json.dumps({"loss": 0.25}))
    """
)


class _RecordingSink:
    def __init__(self):
        self.events = []

    def log_metrics(self, metrics, step=None):
        self.events.append((step, dict(metrics)))


def test_training_stage_through_a_launcher_subprocess(tmp_path):
    script = tmp_path / "fake_accelerate.py"
    script.write_text(FAKE_LAUNCH)
    cfg = tiny_config(tmp_path / "run", orchestration__num_processes=2)
    launcher = AccelerateLauncher(2, accelerate=(sys.executable, str(script)), poll_s=0.05, stages=frozenset({"dpo"}))
    plan = plan_pipeline(cfg, ["dpo"], catalog=catalog())
    for planned in plan.stages[:-1]:
        run_stage(planned, plan.store)
    sink, said = _RecordingSink(), []
    outcome = run_stage(plan["dpo"], plan.store, sink=sink, launcher=launcher, say=said.append)
    assert outcome.metrics == {"loss": 0.25} and not outcome.cached
    assert (outcome.out_dir / "policy.txt").read_text() == "beta=0.1 from ['reference', 'sft']"
    assert sink.events == [(0, {"train/loss": 1.0}), (1, {"train/loss": 0.5}), (2, {"train/loss": 1 / 3})]
    assert said == ["dpo: resumed from step 2 of 3"]
    assert "dpo" not in calls(cfg)  # ran in the subprocess, not in-process


def test_launcher_failure_is_a_stage_failure(tmp_path):
    cfg = tiny_config(tmp_path)
    launcher = AccelerateLauncher(2, accelerate=(sys.executable, "-c", "import sys; sys.exit(3)"), poll_s=0.05, stages=frozenset({"sft"}))
    plan = plan_pipeline(cfg, ["sft"], catalog=catalog())
    with pytest.raises(StageFailed, match="exited with code 3"):
        run_stage(plan["sft"], plan.store, launcher=launcher)
    assert plan.store.lookup("sft", plan["sft"].key) is None


def test_launch_command_matches_the_contract(tmp_path):
    cfg = tiny_config(tmp_path, orchestration__num_processes=4)
    from alignpipe.stages.base import StageContext

    planned = plan_pipeline(cfg, ["dpo"], catalog=catalog())["dpo"]
    ctx = StageContext(planned.config, tmp_path / "out", {"sft": tmp_path / "sft"}, resume_dir=tmp_path / "resume")
    cmd = AccelerateLauncher(4, config_file="infra/accelerate/ddp.yaml").command("dpo", ctx, tmp_path / "m", tmp_path / "r", tmp_path / "s")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[3:9] == ["--num_processes", "4", "--config_file", "infra/accelerate/ddp.yaml", "-m", "alignpipe.stages.launch"]
    args = dict(zip(cmd[9::2], cmd[10::2]))
    assert args["--stage"] == "dpo" and json.loads(args["--config"])["dpo"]["beta"] == 0.1
    assert set(json.loads(args["--config"])) == {"dpo", "run_dir"}  # the child gets the slice only
    assert json.loads(args["--inputs"]) == {"sft": str(tmp_path / "sft")}
    assert args["--resume"] == str(tmp_path / "resume")
    with pytest.raises(ValueError, match="orchestration.accelerate_config: nope.yaml"):
        AccelerateLauncher.from_settings(2, "nope.yaml")
    with pytest.raises(ValueError, match="orchestration.accelerate_config: only used with orchestration.num_processes > 1"):
        AccelerateLauncher.from_settings(1, "infra/accelerate/cpu_2proc.yaml")
    assert AccelerateLauncher.from_settings(1, None) is None
