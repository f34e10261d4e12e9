"""Scorers: VADER's sign and range, the HF classifier's probabilities, batching and labels."""
from __future__ import annotations

import math

import pytest
import torch

from alignpipe.rewards import HFClassifierScorer, VaderScorer, make_scorer

POSITIVE = "This movie was wonderful, moving and beautifully acted. I loved it."
NEGATIVE = "A dreadful, boring mess. The worst film I have seen in years."
NEUTRAL = "The film is ninety minutes long."


def test_vader_orders_sentiment_and_stays_in_range():
    scores = VaderScorer().score([POSITIVE, NEGATIVE, NEUTRAL])
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert VaderScorer().score([]) == []


def test_vader_rejects_non_text():
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        VaderScorer().score(["fine", None])  # type: ignore[list-item]


def test_make_scorer_validates_its_options():
    assert isinstance(make_scorer("vader"), VaderScorer)
    with pytest.raises(ValueError, match="needs a model"):
        make_scorer("hf_classifier", None)
    with pytest.raises(ValueError, match="takes no model"):
        make_scorer("vader", "siebert/sentiment-roberta-large-english")
    with pytest.raises(ValueError, match="unknown scorer kind 'judge'"):
        make_scorer("judge")


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory, smol_tokenizer):
    """A random 1-layer Llama sequence classifier with NEGATIVE/POSITIVE labels, saved locally."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=None,  # the scorer must supply it from the tokenizer
    )
    model = LlamaForSequenceClassification(config)
    # Random heads give near-0.5 probabilities; spread them so the checks below can fail.
    with torch.no_grad():
        model.score.weight.mul_(50.0)
    out = tmp_path_factory.mktemp("tiny_cls")
    model.save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out


def test_hf_classifier_scores_are_probabilities_and_batch_invariant(tiny_classifier_dir):
    texts = [POSITIVE, NEGATIVE, NEUTRAL, "ok", "short and sweet, with a much longer tail " * 3]
    batched = HFClassifierScorer(tiny_classifier_dir, batch_size=4, device="cpu").score(texts)
    single = HFClassifierScorer(tiny_classifier_dir, batch_size=1, device="cpu").score(texts)
    assert len(batched) == len(texts)
    assert all(0.0 < s < 1.0 for s in batched)
    assert batched == pytest.approx(single, abs=1e-5)
    assert max(batched) - min(batched) > 1e-3  # the texts are told apart


def test_hf_classifier_logit_and_label_choice(tiny_classifier_dir):
    texts = [POSITIVE, NEGATIVE, NEUTRAL]
    probs = HFClassifierScorer(tiny_classifier_dir, device="cpu").score(texts)
    logits = HFClassifierScorer(tiny_classifier_dir, output="logit", device="cpu").score(texts)
    negative = HFClassifierScorer(tiny_classifier_dir, positive_label="negative", device="cpu").score(texts)
    assert logits == pytest.approx([math.log(p / (1 - p)) for p in probs], abs=1e-4)
    assert negative == pytest.approx([1 - p for p in probs], abs=1e-5)


def test_hf_classifier_unknown_label_names_the_choices(tiny_classifier_dir):
    with pytest.raises(ValueError, match=r"positive_label 'LABEL_1'.*\['NEGATIVE', 'POSITIVE'\]"):
        HFClassifierScorer(tiny_classifier_dir, positive_label="LABEL_1", device="cpu")


def test_make_scorer_builds_the_hf_classifier(tiny_classifier_dir):
    scorer = make_scorer("hf_classifier", str(tiny_classifier_dir))
    assert scorer.name == f"hf_classifier:{tiny_classifier_dir}"
    assert len(scorer.score([POSITIVE])) == 1


def test_unloadable_classifier_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="reward classifier 'org/not-here' cannot be loaded"):
        make_scorer("hf_classifier", "org/not-here")
