"""dpo.prefix_sharing 'auto' is decided once, by the reference stage under the training autocast, and
stored with the reference log-probs; the DPO stage trains in that layout without deciding again
(the two stages used to decide separately, in different precisions, and could disagree)."""
import shutil

import pytest

from alignpipe.stages.artifacts import read_reference, write_pairs
from alignpipe.stages.base import StageContext
from pipeline_config import load_config

PAIRS = [{"prompt": "The film", "chosen": " was great, I loved it.", "rejected": " was awful."}] * 4


def _reference(tmp_path, tiny_model_dir, name: str, overrides: list[str], lines: list[str]):
    from alignpipe.stages.reference_stage import SPEC

    sft, pairs = tmp_path / "sft", tmp_path / "pairs"
    if not sft.exists():
        shutil.copytree(tiny_model_dir, sft / "model")
        pairs.mkdir()
        write_pairs(pairs, PAIRS)
    out = tmp_path / name
    out.mkdir()
    cfg = load_config("demo", overrides=overrides)
    metrics = SPEC.run(StageContext(SPEC.config.of(cfg), out, {"sft": sft, "pairs": pairs}, say=lines.append))
    return out, metrics


def test_the_reference_stage_decides_auto_once_and_dpo_trains_in_that_layout(tmp_path, tiny_model_dir, monkeypatch):
    import alignpipe.dpo.scoring as scoring
    from alignpipe.stages.dpo_stage import SPEC as DPO

    lines: list[str] = []
    on, metrics = _reference(tmp_path, tiny_model_dir, "ref-on", ["dpo.prefix_sharing=auto"], lines)
    assert read_reference(on).prefix_sharing == "on" and metrics["prefix_sharing"] == 1.0 and lines == []

    monkeypatch.setattr(scoring, "prefix_sharing_agrees", lambda *a, **k: False)  # as a model whose check disagrees
    off, metrics = _reference(tmp_path, tiny_model_dir, "ref-off", ["dpo.prefix_sharing=auto"], lines)
    assert read_reference(off).prefix_sharing == "off" and metrics["prefix_sharing"] == 0.0
    assert lines == ["reference: prefix sharing off: shared-prefix log-probs disagree with separate forwards for this model"]

    def must_not_decide(*args, **kwargs):
        raise AssertionError("the DPO stage decided prefix sharing again")

    monkeypatch.setattr(scoring, "resolve_prefix_sharing", must_not_decide)
    monkeypatch.setattr(scoring, "prefix_sharing_agrees", must_not_decide)
    cfg = load_config("demo", overrides=["dpo.prefix_sharing=auto", "dpo.max_steps=1", "dpo.batch_size=4", "dpo.micro_batch_size=4", "evaluate.checkpoints=0"])
    out = tmp_path / "dpo"
    out.mkdir()  # 'auto' would be 'on' for this model: the stored 'off' is what DPO trains in
    metrics = DPO.run(StageContext(DPO.config.of(cfg), out, {"sft": tmp_path / "sft", "reference": off}, say=lines.append))
    assert (metrics["prefix_sharing"], metrics["attention_concatenated"]) == (0.0, 1.0)
    assert metrics["final_loss"] == pytest.approx(0.6931471805599453, abs=1e-5)  # step 0: policy == reference in its layout


def test_a_reference_without_the_decision_is_refused_in_one_line(tmp_path, tiny_model_dir):
    from alignpipe.stages.artifacts import ReferencePairs, write_reference
    from alignpipe.stages.dpo_stage import SPEC as DPO

    out, _ = _reference(tmp_path, tiny_model_dir, "ref", [], [])
    ref = read_reference(out)
    old = tmp_path / "old-ref"
    old.mkdir()
    write_reference(old, ReferencePairs(ref.pairs, ref.chosen_logps, ref.rejected_logps, ref.source_index))  # no decision
    cfg = load_config("demo", overrides=["dpo.max_steps=1", "dpo.batch_size=4", "dpo.micro_batch_size=4", "evaluate.checkpoints=0"])
    dpo_out = tmp_path / "dpo"
    dpo_out.mkdir()
    with pytest.raises(ValueError, match=r"^dpo: the reference output records no prefix_sharing decision .*recompute the reference stage$"):
        DPO.run(StageContext(DPO.config.of(cfg), dpo_out, {"sft": tmp_path / "sft", "reference": old}))
