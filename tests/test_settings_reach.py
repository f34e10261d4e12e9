"""Settings that used to be silently ignored, each shown to take effect where it should."""
from __future__ import annotations

import io
import shutil

import pytest
from rich.console import Console


def test_chat_template_reaches_sampling(tiny_model, smol_tokenizer):
    """model.chat_template: generation sends the prompt as a user turn, as SFT and DPO saw it."""
    from alignpipe.generate import generate

    seen = []
    real = tiny_model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return real(**kwargs)

    tiny_model.generate = spy
    generate(tiny_model, smol_tokenizer, ["Great movie"], max_new_tokens=2, temperature=0, chat_template=True)
    generate(tiny_model, smol_tokenizer, ["Great movie"], max_new_tokens=2, temperature=0, chat_template=False)
    templated, plain = (smol_tokenizer.decode(ids) for ids in seen)
    expected = smol_tokenizer.apply_chat_template([{"role": "user", "content": "Great movie"}], tokenize=False, add_generation_prompt=True)
    assert templated == expected and "<|im_start|>user\nGreat movie" in templated
    assert plain == "Great movie"


def test_prefix_sharing_and_precision_reach_the_reference_stage(tmp_path, tiny_model_dir, monkeypatch):
    """dpo.prefix_sharing and model.dtype reach the reference pass (they used not to)."""
    import alignpipe.dpo.scoring as scoring
    from alignpipe.stages.artifacts import read_reference, write_pairs
    from alignpipe.stages.base import StageContext
    from alignpipe.stages.reference_stage import SPEC
    from pipeline_config import load_config

    calls = []
    real = scoring.tokenized_pair_logps

    def spy(*args, **kwargs):
        import torch

        calls.append((kwargs["prefix_sharing"], torch.is_autocast_enabled("cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "tokenized_pair_logps", spy)
    sft, pairs = tmp_path / "sft", tmp_path / "pairs"
    shutil.copytree(tiny_model_dir, sft / "model")
    pairs.mkdir()
    write_pairs(pairs, [{"prompt": "The film", "chosen": " was great.", "rejected": " was awful."}] * 3)
    results = {}
    for sharing, dtype in (("off", "float32"), ("on", "bfloat16")):
        cfg = load_config("demo", overrides=[f"dpo.prefix_sharing={sharing}", f"model.dtype={dtype}"])
        out = tmp_path / f"out-{sharing}"
        out.mkdir()
        SPEC.run(StageContext(SPEC.config.of(cfg), out, {"sft": sft, "pairs": pairs}))
        results[sharing] = read_reference(out)
    assert calls == [("off", False), ("on", True)]
    assert results["off"].pairs == results["on"].pairs  # the same token ids either way


def test_a_resumed_training_stage_says_so_on_the_console(tmp_path, tiny_model_dir):
    """Interrupted after a checkpoint, the next run continues from it and says "dpo: resumed from step 2 of N"."""
    from contextlib import contextmanager

    from alignpipe.pipeline import ConsoleReporter, NullTracker, StageFailed, run_pipeline
    from alignpipe.stages.base import NullSink
    from pipeline_config import load_config
    from tiny_pipeline import tiny_pipeline_config

    class Interrupted(RuntimeError):
        pass

    class StopAtStep3:
        def log_metrics(self, metrics, step=None):
            if step == 3:
                raise Interrupted("the machine went away at step 3")

    class StageRecord:
        def __init__(self, sink):
            self.sink = sink

        def record(self, outcome):
            pass

    class InterruptingTracker(NullTracker):
        """The only double here: the dpo stage's metrics sink raises after the step-2 checkpoint."""

        @contextmanager
        def stage(self, planned):
            yield StageRecord(StopAtStep3() if planned.name == "dpo" else NullSink())

    cfg = load_config(path=tiny_pipeline_config(tmp_path, tiny_model_dir))
    assert cfg.dpo.checkpoint_every == 2
    with pytest.raises(StageFailed, match="the machine went away at step 3"):
        run_pipeline(cfg, ["dpo"], tracker=InterruptingTracker(), reporter=ConsoleReporter(Console(file=io.StringIO())))
    console = Console(file=io.StringIO(), width=200)
    result = run_pipeline(cfg, ["dpo"], reporter=ConsoleReporter(console))
    assert result.executed == ["dpo"]
    steps = int(result.outcome("dpo").metrics["steps"])
    assert f"dpo: resumed from step 2 of {steps}" in console.file.getvalue()
