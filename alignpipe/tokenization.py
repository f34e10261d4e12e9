"""The data contract: turn {prompt, chosen, rejected} (text or chat messages) into token ids.

The full sequence is tokenized once and the completion is found from the prompt boundary via
character offsets, so BPE merges at the boundary cannot make prompt and completion disagree.
Exactly one BOS where the model uses one; EOS appended to every completion and always counted
(even when pad == eos: padding is tracked by lengths, never by token id).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def __len__(self) -> int:  # tokens in one prefix-shared row
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


@dataclass(frozen=True)
class TokenizedExample:
    """One SFT example: loss on `completion` only."""

    prompt: list[int]
    completion: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.completion)


@dataclass
class TokenizeStats:
    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    dropped_indices: list[int] = field(default_factory=list)

    def as_metrics(self, prefix: str = "data") -> dict[str, float]:
        return {f"{prefix}/{k}": float(v) for k, v in vars(self).items() if k != "dropped_indices"}


def as_chat(prompt: Any, chat_template: bool) -> Any:
    """With model.chat_template a plain-text prompt becomes one user turn, rendered by the tokenizer's
    template wherever it is tokenized: SFT, pairs, sampling, evaluation and KL. An empty prompt
    (whole-text SFT) stays empty."""
    if chat_template and isinstance(prompt, str) and prompt:
        return [{"role": "user", "content": prompt}]
    return prompt


def _is_messages(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in x)


def _check_text(value: Any, what: str, index: int) -> None:
    if _is_messages(value):
        if not value or not any(str(m["content"]).strip() for m in value):
            raise ValueError(f"record {index}: '{what}' is empty")
        return
    if not isinstance(value, str):
        raise ValueError(f"record {index}: '{what}' must be a string or a list of {{role, content}} messages")
    if not value.strip():
        raise ValueError(f"record {index}: '{what}' is empty")


def uses_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos]


def _render(tokenizer, prompt, completion) -> tuple[str, str, bool]:
    """(prompt_text, full_text, text_already_has_special_tokens)."""
    if _is_messages(prompt):
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        # Templates end a turn with EOS plus a newline; the newline would hide the EOS we append.
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False).rstrip()
        if not full_text.startswith(prompt_text):
            raise ValueError("chat template renders the prompt differently with and without the reply")
        return prompt_text, full_text, True
    return prompt, prompt + completion, False


def _encode(tokenizer, prompt_text: str, full_text: str, templated: bool) -> tuple[list[int], int]:
    """Token ids of the full text and the index of the first completion token."""
    enc = tokenizer(full_text, add_special_tokens=not templated, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    bos = tokenizer.bos_token_id
    if uses_bos(tokenizer):
        if ids[:1] != [bos]:
            ids, offsets = [bos] + ids, [(0, 0)] + offsets
        while len(ids) > 1 and ids[1] == bos and ids[0] == bos:  # template text + tokenizer both added one
            ids, offsets = ids[1:], offsets[1:]
    cut = len(prompt_text)
    boundary = next((i for i, (_, end) in enumerate(offsets) if end > cut), len(ids))
    return ids, boundary


def _with_eos(ids: list[int], eos: int) -> list[int]:
    return ids if ids[-1:] == [eos] else ids + [eos]


def _truncate_prompt(prompt: list[int], max_prompt_length: int, bos: int | None) -> list[int]:
    """Keep the end of the prompt (and its BOS)."""
    if len(prompt) <= max_prompt_length:
        return prompt
    if bos is not None and prompt[:1] == [bos]:
        return [bos] + prompt[len(prompt) - (max_prompt_length - 1):]
    return prompt[len(prompt) - max_prompt_length:]


def tokenize_pairs(
    tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    max_length: int,
    max_prompt_length: int,
) -> tuple[list[TokenizedPair], TokenizeStats]:
    """Tokenize preference pairs; truncated and dropped pairs are counted, bad records raise."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if uses_bos(tokenizer) else None
    out: list[TokenizedPair] = []
    stats = TokenizeStats(total=len(records))
    for i, rec in enumerate(records):
        for key in ("prompt", "chosen", "rejected"):
            if key not in rec:
                raise ValueError(f"record {i}: missing field '{key}'")
            _check_text(rec[key], key, i)
        if rec["chosen"] == rec["rejected"]:
            raise ValueError(f"record {i}: 'chosen' and 'rejected' are identical")
        p_c, full_c, templ = _render(tokenizer, rec["prompt"], rec["chosen"])
        p_r, full_r, _ = _render(tokenizer, rec["prompt"], rec["rejected"])
        ids_c, b_c = _encode(tokenizer, p_c, full_c, templ)
        ids_r, b_r = _encode(tokenizer, p_r, full_r, templ)
        # The shared prompt is what both tokenizations agree on before either completion starts.
        lcp = next((k for k, (a, b) in enumerate(zip(ids_c, ids_r)) if a != b), min(len(ids_c), len(ids_r)))
        p_len = min(b_c, b_r, lcp)
        prompt, chosen, rejected = ids_c[:p_len], ids_c[p_len:], ids_r[p_len:]
        if not prompt:
            raise ValueError(f"record {i}: prompt produced no tokens")
        chosen, rejected = _with_eos(chosen, eos), _with_eos(rejected, eos)
        truncated = False
        new_prompt = _truncate_prompt(prompt, max_prompt_length, bos)
        truncated |= new_prompt is not prompt
        budget = max_length - len(new_prompt)
        if len(chosen) > budget or len(rejected) > budget:
            chosen, rejected, truncated = chosen[:budget], rejected[:budget], True
        if chosen == rejected:  # truncation erased the difference: no learning signal left
            stats.dropped += 1
            stats.dropped_indices.append(i)
            continue
        stats.truncated += truncated
        out.append(TokenizedPair(new_prompt, chosen, rejected))
    stats.kept = len(out)
    return out, stats


def tokenize_examples(
    tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    max_length: int,
    max_prompt_length: int,
) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Tokenize SFT examples {prompt, completion}; the prompt may be empty (whole-text SFT)."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if uses_bos(tokenizer) else None
    out: list[TokenizedExample] = []
    stats = TokenizeStats(total=len(records))
    for i, rec in enumerate(records):
        if "prompt" not in rec or "completion" not in rec:
            raise ValueError(f"record {i}: needs fields 'prompt' and 'completion'")
        _check_text(rec["completion"], "completion", i)
        p_text, full, templ = _render(tokenizer, rec["prompt"], rec["completion"])
        ids, b = _encode(tokenizer, p_text, full, templ)
        prompt, completion = _truncate_prompt(ids[:b], max_prompt_length, bos), _with_eos(ids[b:], eos)
        truncated = len(prompt) != b
        if not prompt:  # nothing predicts the first token: it becomes context
            prompt, completion = completion[:1], completion[1:]
        if len(prompt) + len(completion) > max_length:
            completion, truncated = completion[: max_length - len(prompt)], True
        if not completion:
            stats.dropped += 1
            stats.dropped_indices.append(i)
            continue
        stats.truncated += truncated
        out.append(TokenizedExample(prompt, completion))
    stats.kept = len(out)
    return out, stats
