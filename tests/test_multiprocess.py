"""`accelerate launch --num_processes 2` on CPU (gloo): 2 x batch 4 follows 1 x batch 8."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "train_dpo_tiny.py"


def _launch(n_proc: int, micro: int, model_dir: Path, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if n_proc > 1 else ["--cpu"]),
        "--num_processes", str(n_proc),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(29500 + os.getpid() % 1000 + n_proc),
        str(SCRIPT), str(model_dir), str(micro), str(out),
    ]  # fmt: skip
    # `--cpu` alone runs one process (it expects mpirun); `--multi_gpu` starts torchrun workers, and
    # on a machine without CUDA the loop's Accelerator(cpu=True) joins them over gloo.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    run_one = _launch(1, 8, tiny_model_dir, tmp_path / "one.json")
    run_two = _launch(2, 4, tiny_model_dir, tmp_path / "two.json")
    assert (run_one["world"], run_two["world"]) == (1, 2)
    one, two = run_one["loss"], run_two["loss"]
    assert len(one) == len(two) == 4
    assert one[0] == pytest.approx(math.log(2), abs=1e-6) and two[0] == pytest.approx(math.log(2), abs=1e-6)
    assert two == pytest.approx(one, abs=2e-4)
