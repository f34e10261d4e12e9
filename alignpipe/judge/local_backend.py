"""Judging with a local HF causal LM: the same prompt, and the verdict read from next-token odds.

Rather than generating "Comparison: ... Preferred: X" and parsing it, the answer's verdict line
is started for the model ("...\\nPreferred:") and the probabilities of "A" vs "B" as the next
token are compared. One forward pass per judgment, never malformed, deterministic.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from alignpipe.judge.backend import Answer, OnAnswer, Request
from alignpipe.judge.templates import get_template, render

log = logging.getLogger(__name__)


def letter_token_ids(tokenizer: Any, letter: str) -> list[int]:
    """Single-token spellings of a verdict letter (" A" and "A"); both count toward its probability."""
    ids = []
    for spelling in (f" {letter}", letter):
        encoded = tokenizer.encode(spelling, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids:
        raise ValueError(f"judge.local_model: the tokenizer has no single token for '{letter}'")
    return ids


class LocalLMBackend:
    name = "local"
    order_sensitive = True

    def __init__(self, model_path: str | Path, template: str, *, batch_size: int = 4, device: Optional[str] = None) -> None:
        if not Path(model_path).exists():
            raise FileNotFoundError(f"judge.local_model: '{model_path}' does not exist (a local HF model directory)")
        get_template(template)
        self.model_path = Path(model_path)
        self.model_id = str(model_path)
        self.template = template
        self.batch_size = batch_size
        self._device = device
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        """Load on first use, so a run whose verdicts are all cached never touches the model."""
        import torch

        from alignpipe.models import default_device, load_causal_lm, load_tokenizer, resolve_dtype

        device = torch.device(self._device) if self._device else default_device()
        self._tokenizer = load_tokenizer(self.model_path)
        self._tokenizer.padding_side = "left"
        self._model = load_causal_lm(self.model_path, dtype=resolve_dtype("auto", device)).to(device).eval()
        self._ids_a = letter_token_ids(self._tokenizer, "A")
        self._ids_b = letter_token_ids(self._tokenizer, "B")
        if set(self._ids_a) & set(self._ids_b):
            raise ValueError(f"judge.local_model: 'A' and 'B' share a token in {self.model_path}")

    def judge_text(self, request: Request) -> str:
        """The prompt as the model sees it, ending where the verdict letter goes."""
        question = render(self.template, request.prompt, request.first, request.second)
        cue = f"{get_template(self.template).answer_key}:"
        if getattr(self._tokenizer, "chat_template", None):
            chat = self._tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            return chat + cue
        return f"{question}\n\n{cue}"

    def answer(self, requests: list[Request], on_answer: OnAnswer) -> None:
        import torch

        if not requests:
            return
        if self._model is None:
            self._load()
        device = next(self._model.parameters()).device
        starts = range(0, len(requests), self.batch_size)
        for start in tqdm(starts, desc="local judge batches", leave=False, disable=len(starts) < 2):
            batch = requests[start : start + self.batch_size]
            enc = self._tokenizer([self.judge_text(r) for r in batch], return_tensors="pt", padding=True).to(device)
            # Left padding: positions restart at each row's first real token (RoPE would not care,
            # absolute-position models do).
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self._model(**enc, position_ids=positions).logits[:, -1, :].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            score_a = torch.logsumexp(log_probs[:, self._ids_a], dim=-1)
            score_b = torch.logsumexp(log_probs[:, self._ids_b], dim=-1)
            lengths = enc["attention_mask"].sum(-1).tolist()
            for r, a, b, n in zip(batch, score_a.tolist(), score_b.tolist(), lengths):
                first_wins = 1.0 if a > b else 0.0 if b > a else None
                on_answer(r, Answer(first_wins, f"logp(A)={a:.6f} logp(B)={b:.6f}", input_tokens=int(n)))
