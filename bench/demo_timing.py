"""Wall time of the README's `make demo` as a new user meets it, and of a sweep after it.

Clones this repository (its committed HEAD) into a temporary directory and runs there, timing each:
  first   `make demo`: creates .venv, installs, runs all seven stages
  cached  `make demo` again: every stage reused
  sweep   (--sweep) `alignpipe sweep --preset demo --grid dpo.beta=0.05,0.1,0.5`: sft, pairs and
          reference reused, the beta=0.1 member entirely, two new DPO members trained and evaluated
with the one-minute load average before and after each (the machine may be shared), each stage's
compute time from the run's manifests, and what the demo showed: the headline win rate of DPO vs
SFT with its 95% CI, the paired mean reward difference with its CI, and the frontier.
Goals (issue 15): first run at most 10 minutes, cached at most 15 s, the headline interval above
0.5 and the reward difference's above 0. `--seed N` runs `make demo DEMO_ARGS="--set seed=N"`.

    python -m bench.demo_timing --json --out bench/results/demo_timing_cpu.json
    python -m bench.demo_timing --seed 1 --json --out bench/results/demo_timing_cpu_seed1.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS_S = {"first": 600.0, "cached": 15.0}
SWEEP_GRID = "dpo.beta=0.05,0.1,0.5"


def _timed(name: str, cmd: list[str], cwd: Path, log: Path) -> dict:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    seconds = time.perf_counter() - start
    print(f"{name}: {seconds:.1f} s (exit {proc.returncode})", file=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: `{' '.join(cmd)}` exited {proc.returncode}; its output: {log}")
    return {"command": " ".join(cmd), "seconds": round(seconds, 1), "loadavg_1min_before": load_before,
            "loadavg_1min_after": os.getloadavg()[0]}  # fmt: skip


def _stage_seconds(clone: Path) -> dict[str, float]:
    """Compute time of every stage output in the clone's store, by stage (several with a sweep)."""
    out: dict[str, list[float]] = {}
    for manifest in sorted((clone / "runs" / "store").glob("*/*/manifest.json")):
        record = json.loads(manifest.read_text())
        out.setdefault(manifest.parent.parent.name, []).append(round(float(record.get("seconds", 0.0)), 1))
    return out


def _headline(clone: Path) -> dict:
    """The demo's headline row (DPO vs SFT at the headline temperature) and its frontier, as run."""
    evaluate = [m.parent for m in (clone / "runs" / "store" / "evaluate").glob("*/manifest.json")]
    if len(evaluate) != 1:
        raise SystemExit(f"expected one evaluate output in {clone}/runs/store, found {len(evaluate)}")
    row = next(r for r in json.loads((evaluate[0] / "win_rates.json").read_text()) if r["headline"])
    keep = ("baseline", "temperature", "n_prompts", "n_valid", "win_rate", "ci_low", "ci_high",
            "reward_diff", "reward_diff_ci_low", "reward_diff_ci_high", "mean_length_policy", "mean_length_baseline")
    frontier = [{k: r.get(k) for k in ("label", "dpo_step", "mean_reward", "reward_ci_low", "reward_ci_high", "kl", "kl_ci_low", "kl_ci_high", "n")}
                for r in json.loads((evaluate[0] / "frontier.json").read_text())]  # fmt: skip
    return {"headline": {k: row.get(k) for k in keep}, "frontier": frontier}


def parser() -> argparse.ArgumentParser:
    """This bench's options (also what tests/test_readme.py parses the README's commands with)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time the 3-point beta sweep after the demo")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--seed", type=int, default=None, help="run the demo with --set seed=N")
    return parser


def main() -> None:
    args = parser().parse_args()
    demo = ["make", "demo"] + ([f"DEMO_ARGS=--set seed={args.seed}"] if args.seed is not None else [])

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="alignpipe-demo-timing-"))
    clone = work / "alignpipe"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    runs = {
        "first": _timed("first make demo", demo, clone, work / "first.log"),
        "cached": _timed("cached make demo", demo, clone, work / "cached.log"),
    }
    shown = _headline(clone)
    if args.sweep:
        runs["sweep"] = _timed("sweep", [".venv/bin/alignpipe", "sweep", "--preset", "demo", "--grid", SWEEP_GRID], clone, work / "sweep.log")
    result = {
        "benchmark": "demo_timing",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},  # fmt: skip
        "runs": runs,
        "seed": args.seed if args.seed is not None else 0,
        "stage_seconds": _stage_seconds(clone),
        **shown,
        "goals": {
            **{name: {"goal_s": goal, "seconds": runs[name]["seconds"], "met": runs[name]["seconds"] <= goal}
               for name, goal in GOALS_S.items()},
            "headline_ci_above_half": {"ci_low": shown["headline"]["ci_low"], "met": shown["headline"]["ci_low"] > 0.5},
            "reward_diff_ci_above_zero": {"ci_low": shown["headline"]["reward_diff_ci_low"],
                                          "met": (shown["headline"]["reward_diff_ci_low"] or 0.0) > 0.0},
        },  # fmt: skip
        "logs": str(work),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text if args.json else f"first {runs['first']['seconds']} s, cached {runs['cached']['seconds']} s")


if __name__ == "__main__":
    main()
