"""The device check, dry on CPU: every step up to what needs CUDA runs through the real script, and
the throughput bench inside it (tiny shapes) writes every field the issue asks for. No numbers from
here mean anything: benchmarks are run, not tested."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.dpo_throughput import _goals
from bench.flops import pair_flops

ROOT = Path(__file__).resolve().parents[1]


def test_needed_flops_by_hand():
    """One layer, hidden 4, intermediate 8, vocab 10; prompt 2, chosen 1, rejected 1."""
    p = dict(hidden=4, layers=1, heads=2, intermediate=8)
    body = 4 * 4 * 4 + 3 * 4 * 8  # q, k, v, o (kv heads = heads) + gate, up, down
    attended = (3 * 4 // 2) + 1 * 2 + 1  # prompt+chosen causal: 6 pairs; rejected: the prompt and itself
    assert pair_flops(p, 10, 2, 1, 1) == 6 * body * 4 + 6 * 10 * 4 * 2 + 12 * 1 * 4 * attended


def test_goals_compare_the_best_alignpipe_arm_with_the_strongest_trl_arm():
    arms = {
        "alignpipe_dense": {"tokens_per_s": 900.0, "peak_memory_mb": 1000.0, "mfu": 0.45},
        "alignpipe_packed": {"tokens_per_s": 1000.0, "peak_memory_mb": 1100.0, "mfu": 0.35},
        "trl": {"tokens_per_s": 200.0, "peak_memory_mb": 2000.0, "mfu": 0.1},
        "trl_precomputed_ref": {"tokens_per_s": 400.0, "peak_memory_mb": 2000.0, "mfu": 0.2},
    }
    goals = _goals("cpu", arms)
    assert (goals["alignpipe_arm"], goals["trl_arm"]) == ("alignpipe_packed", "trl_precomputed_ref")
    assert goals["tokens_per_s_ratio"] == {"goal": ">= 3.0", "value": 2.5, "met": False, "missed_by": 0.5}
    assert goals["peak_memory_ratio"] == {"goal": "<= 0.5", "value": 0.55, "met": False, "missed_by": pytest.approx(0.05)}
    assert goals["mfu"]["met"] is False and goals["mfu"]["missed_by"] == pytest.approx(0.05)
    arms["alignpipe_packed"].update(tokens_per_s=1300.0, peak_memory_mb=900.0, mfu=0.5)
    assert all(_goals("cpu", arms)[g]["met"] for g in ("tokens_per_s_ratio", "peak_memory_ratio", "mfu"))


@pytest.mark.slow
def test_dry_device_check_runs_every_step_and_reports_the_issue_fields(tmp_path, smol_tokenizer_dir):
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", "bench/gpu_check.sh", "--dry", "--out", str(tmp_path), "--tokenizer", str(smol_tokenizer_dir)]  # as the device run
    proc = subprocess.run(cmd, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert any(line.startswith("gpu_check dry: passed") for line in proc.stdout.splitlines())
    check = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "failed" not in check and check["environment"]["cuda"] is False

    grads = check["gradients"]
    assert grads["dense_packed"]["relative_grad_error"] < 1e-4 and grads["dense_one_row"]["relative_grad_error"] < 1e-4
    for flex in ("flex_shared", "flex_packed"):  # CPU: no flex backward, said so
        assert grads[flex]["skipped"].startswith("no FlexAttention backward on cpu")

    training = check["training"]
    assert training["steps"] == 50 and training["attention_path"] == "dense" and training["row_packing"] == "to_longest"
    assert training["step0_error"] < 1e-6 and abs(training["step0_loss"] - math.log(2)) < 1e-6
    assert training["last10_mean_loss"] < training["step0_loss"] - 0.05

    bench = json.loads((tmp_path / "dpo_throughput_dry.json").read_text())
    assert set(bench["arms"]) == {"alignpipe_dense", "alignpipe_packed", "trl_precomputed_ref"}
    assert len(bench["loadavg"]["start"]) == 3 and len(bench["loadavg"]["end"]) == 3
    assert bench["peak"]["flop_per_s"] > 0 and len(bench["peak"]["measurements"]) == 2
    assert bench["peak"]["measurements"][0]["kind"] == "cpu fp32 matmul of the model's shapes"
    assert bench["setup"]["needed_flop_per_pair"] > 0
    for name, arm in bench["arms"].items():
        assert arm["tokens_per_s"] > 0 and arm["peak_memory_mb"] > 0 and 0 <= arm["padding_fraction"] < 1, name
        assert arm["mfu"] == pytest.approx(arm["needed_flop_per_s"] / bench["peak"]["flop_per_s"]), name
        assert len(arm["loadavg_before"]) == 3 and len(arm["loadavg_after"]) == 3, name
    # TRL pads [prompt|chosen] and [prompt|rejected] rows to the longest; one prefix-shared row per pair pads less
    assert bench["arms"]["alignpipe_dense"]["padding_fraction"] < bench["arms"]["trl_precomputed_ref"]["padding_fraction"]
    assert bench["arms"]["trl_precomputed_ref"]["settings"]["precompute_ref_log_probs"] is True
    assert bench["arms"]["alignpipe_packed"]["settings"]["row_packing"] == "to_longest"
    for name in ("alignpipe_dense_vs_trl_precomputed_ref", "alignpipe_packed_vs_trl_precomputed_ref"):
        assert set(bench["ratios"][name]) == {"tokens_per_s", "tokens_per_s_incl_reference", "peak_memory"}
    assert bench["goals"] == {}  # the issue's goals are for the cpu and gpu presets, not the dry one


def test_device_mode_refuses_to_start_unprepared(tmp_path):
    """Without the carried wheels and tokenizer the device run stops at once, saying what to do."""
    work = tmp_path / "repo"
    (work / "bench").mkdir(parents=True)
    (work / "bench" / "gpu_check.sh").write_text((ROOT / "bench" / "gpu_check.sh").read_text())
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=work, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "run 'bash bench/gpu_check.sh --prepare' here first and carry .whl and .gpucheck" in proc.stderr


def test_a_failing_arm_fails_the_bench_loudly(tmp_path, smol_tokenizer_dir):
    """On CPU FlexAttention cannot train: that arm fails, the bench exits non-zero naming it, and the
    JSON says which arm failed and why."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench.dpo_throughput", "--preset", "dry", "--arms", "alignpipe_flex", "--out", str(out), "--tokenizer", str(smol_tokenizer_dir)]
    proc = subprocess.run(cmd,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert "arm alignpipe_flex failed" in proc.stderr and "bench: arms failed: alignpipe_flex" in proc.stderr
    report = json.loads(out.read_text())
    assert report["arms"] == {} and "cannot train on cpu" in report["failed_arms"]["alignpipe_flex"]
