"""Scalar ground-truth scorers: they label preference pairs and serve as the `reward` judge.

Every scorer maps a batch of texts to one float per text, higher meaning "more preferred".
VADER runs offline with no model; the HF classifier wraps any sequence-classification
checkpoint (e.g. siebert/sentiment-roberta-large-english, the DPO paper's IMDb reward).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Protocol, Sequence

from tqdm.auto import tqdm

SCORER_KINDS = ("vader", "hf_classifier")
# Below this many texts a progress bar is only noise.
_PROGRESS_MIN_TEXTS = 256


class Scorer(Protocol):
    """What the pairs stage and the reward judge need: one score per text, higher is better."""

    name: str

    def score(self, texts: list[str]) -> list[float]: ...


def _check_texts(texts: Sequence[str], who: str) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{who}: texts[{i}] is {type(text).__name__}, expected str")


class VaderScorer:
    """VADER's compound sentiment in [-1, 1]: rule-based, deterministic, no download."""

    name = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: list[str]) -> list[float]:
        _check_texts(texts, "VaderScorer.score")
        bar = tqdm(texts, desc="vader", leave=False, disable=len(texts) < _PROGRESS_MIN_TEXTS)
        return [float(self._analyzer.polarity_scores(t)["compound"]) for t in bar]


class HFClassifierScorer:
    """P(positive) (or its log-odds) from a transformers sequence classifier, batched under no_grad.

    `output="logit"` returns log p/(1-p) of the positive class, which for a two-class head is the
    difference of the two logits: an unbounded reward, useful where probabilities saturate.
    """

    def __init__(
        self,
        model_name_or_path: str | Path,
        positive_label: str = "POSITIVE",
        *,
        output: Literal["prob", "logit"] = "prob",
        batch_size: int = 32,
        max_length: int = 512,
        device: Optional[str] = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from alignpipe.models import default_device

        if output not in ("prob", "logit"):
            raise ValueError(f"HFClassifierScorer: output must be 'prob' or 'logit', got '{output}'")
        if batch_size < 1:
            raise ValueError(f"HFClassifierScorer: batch_size must be >= 1, got {batch_size}")
        self.name = f"hf_classifier:{model_name_or_path}"
        self.output = output
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device) if device else default_device()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_name_or_path))
            model = AutoModelForSequenceClassification.from_pretrained(str(model_name_or_path))
        except OSError as e:  # not a local dir, not on the hub, or the hub unreachable
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"reward classifier '{model_name_or_path}' cannot be loaded: {first}") from e
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Right padding keeps every real token at its unpadded position, so a text's score does
        # not depend on what it was batched with.
        self.tokenizer.padding_side = "right"
        self.model = model.to(self.device).eval()
        if self.model.config.pad_token_id is None:
            # Decoder classifiers pool the last non-pad token, so they must know the pad id.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.positive_index = self._label_index(positive_label, str(model_name_or_path))

    def _label_index(self, positive_label: str, where: str) -> int:
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        matches = [i for i, label in id2label.items() if label.lower() == positive_label.lower()]
        if not matches:
            raise ValueError(
                f"{where}: positive_label '{positive_label}' is not one of the model's labels "
                f"{sorted(id2label.values())}"
            )
        return matches[0]

    def score(self, texts: list[str]) -> list[float]:
        import torch

        _check_texts(texts, "HFClassifierScorer.score")
        scores: list[float] = []
        starts = range(0, len(texts), self.batch_size)
        bar = tqdm(starts, desc="classifier", leave=False, disable=len(texts) < _PROGRESS_MIN_TEXTS)
        with torch.no_grad():
            for start in bar:
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits.float()
                log_probs = torch.log_softmax(logits, dim=-1)
                pos = log_probs[:, self.positive_index]
                if self.output == "prob":
                    scores.extend(pos.exp().tolist())
                else:
                    # log p - log(1 - p), computed stably from the other classes' log-probs.
                    others = torch.cat([log_probs[:, : self.positive_index], log_probs[:, self.positive_index + 1 :]], -1)
                    scores.extend((pos - torch.logsumexp(others, dim=-1)).tolist())
        return scores


def make_scorer(
    kind: str, model: Optional[str] = None, *, positive_label: str = "POSITIVE", output: Literal["prob", "logit"] = "prob"
) -> Scorer:
    """Build a scorer from config values (`PairsConfig.labeler`/`labeler_model`, `JudgeConfig.reward`/`reward_model`)."""
    if kind == "vader":
        if model is not None:
            raise ValueError(f"scorer 'vader' takes no model, but model='{model}' was given")
        return VaderScorer()
    if kind == "hf_classifier":
        if not model:
            raise ValueError(
                "scorer 'hf_classifier' needs a model (e.g. siebert/sentiment-roberta-large-english)"
            )
        return HFClassifierScorer(model, positive_label=positive_label, output=output)
    raise ValueError(f"unknown scorer kind '{kind}' (choose from: {', '.join(SCORER_KINDS)})")


SENTIMENT_TASKS = ("imdb",)  # the sentiment scorer reads the whole review: prompt + continuation


def scored_text(task: str, prompt: str, completion: str) -> str:
    """What a scalar reward sees of a sample: the whole text for sentiment tasks, else the completion."""
    return prompt + completion if task in SENTIMENT_TASKS else completion
