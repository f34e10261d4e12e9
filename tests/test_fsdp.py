"""FSDP2 through infra/accelerate/fsdp.yaml: 2 CPU processes over gloo run real DPO steps, and
checkpoints, resume and the published model are full state dicts equal to one process's run."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _training_fixtures import build_tiny_with_dropout

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "train_dpo_tiny.py"
FSDP_YAML = REPO / "infra" / "accelerate" / "fsdp.yaml"


def _run(args: list[str], out: Path, *, fsdp: bool) -> dict:
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_YAML), "--num_processes", "2",
        "--main_process_port", str(29700 + os.getpid() % 200),
    ]  # fmt: skip
    cmd = [*(launch if fsdp else [sys.executable]), str(SCRIPT), *args[:2], str(out), *args[2:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()) if out.exists() else {}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model" / "model.safetensors"))


def _assert_same_model(fsdp_dir: Path, single_dir: Path, atol: float = 1e-6) -> None:
    from transformers import AutoModelForCausalLM

    got, want = _weights(fsdp_dir), _weights(single_dir)
    assert got.keys() == want.keys()  # full tensors, LoRA merged: no shard or adapter names
    assert all(got[k].shape == want[k].shape and torch.allclose(got[k], want[k], atol=atol) for k in want)
    assert json.loads((fsdp_dir / "model" / "config.json").read_text()) == json.loads((single_dir / "model" / "config.json").read_text())
    AutoModelForCausalLM.from_pretrained(str(fsdp_dir / "model"))  # loadable as a plain model


@pytest.mark.slow
def test_fsdp_lora_dpo_resumes_and_publishes_what_one_process_would(tiny_model_dir, tmp_path):
    """LoRA (sharded frozen and trainable weights in one unit), the adapter-disabled reference,
    clipping over shards, a checkpoint at step 2, a stop after step 3, a resume, the publish."""
    lora = ["--lora", "--adapter-reference"]
    single = _run([str(tiny_model_dir), "8", *lora, "--publish", str(tmp_path / "one")], tmp_path / "one.json", fsdp=False)
    ckpt = tmp_path / "ckpt"
    common = [str(tiny_model_dir), "4", *lora, "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2"]
    _run([*common, "--stop-after", "3"], tmp_path / "stopped.json", fsdp=True)
    saved = ckpt / "step-00000002"
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        ["model.safetensors", "optimizer.safetensors", "state.json", "rng-0.safetensors", "rng-0.json", "rng-1.safetensors", "rng-1.json"]
    )
    lora_a = {k: v for k, v in load_file(str(saved / "model.safetensors")).items() if "lora_A" in k}
    assert lora_a and all(v.shape == (4, 32) for v in lora_a.values())  # full [r, hidden], not a rank's half

    resumed = _run([*common, "--publish", str(tmp_path / "two")], tmp_path / "two.json", fsdp=True)
    assert resumed["world"] == 2 and resumed["resumed_from"] == 2
    assert resumed["fsdp_units"] == ["FSDPLlamaDecoderLayer", "FSDPPeftModelForCausalLM"]
    assert resumed["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert resumed["loss"] == pytest.approx(single["loss"], abs=1e-6)
    grad_norms = [h["grad_norm"] for h in resumed["history"]]
    assert grad_norms == pytest.approx([h["grad_norm"] for h in single["history"]], rel=1e-4)  # global, not a shard's
    _assert_same_model(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow
def test_fsdp_wraps_the_loaded_architectures_layers_full_finetuning_checkpointed(tmp_path, smol_tokenizer):
    """GPT-NeoX (GPTNeoXLayer, an untied LM head in the root unit), full fine-tuning, with
    gradient checkpointing (layers recomputed, and so re-gathered, in backward)."""
    model_dir = build_tiny_with_dropout("gpt_neox", tmp_path / "neox", smol_tokenizer, p=0.0)
    gc = "--gradient-checkpointing"
    single = _run([str(model_dir), "8", gc, "--publish", str(tmp_path / "one")], tmp_path / "one.json", fsdp=False)
    sharded = _run([str(model_dir), "4", gc, "--publish", str(tmp_path / "two")], tmp_path / "two.json", fsdp=True)
    assert sharded["fsdp_units"] == ["FSDPGPTNeoXForCausalLM", "FSDPGPTNeoXLayer"]
    assert sharded["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert sharded["loss"] == pytest.approx(single["loss"], abs=1e-5)
    _assert_same_model(tmp_path / "two", tmp_path / "one", atol=1e-5)
