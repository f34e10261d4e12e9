"""Batched sampling from a causal LM: the workhorse behind preference sampling, evaluation and OOD.

Prompts are sorted by length so each batch carries little padding, left-padded so every row's next
token sits in the last column, and decoded with the KV cache. The attention mask comes from the
tokenizer's padding, never from token ids: SmolLM2's pad token *is* its EOS token.

Each batch is seeded from (seed, batch index), so a batch's samples do not depend on what earlier
batches drew, and the caller's global RNG state is left untouched. Callers that sample several
models for one comparison give each its own seed (`stream_seed(seed, name)`): with one shared seed
two near-identical policies draw identical continuations, artificial ties under a reward judge.

Samples come from the model itself: its own `generation_config` sampling defaults (min_p, top_k,
top_p, typical_p, repetition penalties, n-gram bans, suppressed tokens, ...) are set aside for the
call, keeping only its special token ids, so T = 1 without nucleus truncation is the model's
distribution (what a KL of the policy needs, alignpipe.kl) and not a processed one.

Besides the texts, the result keeps the exact token ids: the prompt as the model was conditioned on
it and the tokens it sampled, so a sequence-level KL can score the very sequence that was drawn
(alignpipe.kl) instead of a re-tokenization of its decoded text.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from alignpipe.batching import length_sorted_batches
from alignpipe.model_parts import base_model
from alignpipe.tokenization import as_chat
from alignpipe.train.precision import autocast


@dataclass
class GenerationResult:
    texts: list[str]  # completions only (no prompt), in the input order
    num_new_tokens: list[int]  # tokens generated per prompt, the stopping EOS included
    tokens_per_s: float  # sum(num_new_tokens) / seconds
    seconds: float  # wall-clock time of the whole call
    prompt_ids: list[list[int]] = field(default_factory=list)  # each prompt's ids as fed to the model (no padding)
    token_ids: list[list[int]] = field(default_factory=list)  # the sampled ids, through the stopping EOS if any
    finished: list[bool] = field(default_factory=list)  # True: stopped at EOS; False: cut at max_new_tokens


def batch_seed(seed: int, batch_index: int) -> int:
    """A 63-bit seed for one batch, derived from (seed, batch index) only."""
    digest = hashlib.sha256(f"{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream_seed(seed: int, name: str) -> int:
    """The seed of one named sampling stream (e.g. "policy", "sft") under the config seed: distinct
    streams draw independently, and each is deterministic given (seed, name)."""
    digest = hashlib.sha256(f"{seed}:stream:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# What a model's own generation config keeps for a call of generate(): its special tokens only.
_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def _plain_generation_config(config):
    """A fresh GenerationConfig with only the token ids of `config`: no logit processor the model's
    authors set as a default (transformers fills every unset argument from the model's own config)."""
    from transformers import GenerationConfig

    return GenerationConfig(**{k: getattr(config, k, None) for k in _TOKEN_FIELDS if getattr(config, k, None) is not None})


@contextmanager
def _own_processors_off(model):
    """The model's generation_config replaced by its token ids alone for the duration of the call."""
    target = base_model(model)
    own = target.generation_config
    target.generation_config = _plain_generation_config(own)
    try:
        yield
    finally:
        target.generation_config = own


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]  # a copy: never edit the model's config
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return [i for i in ids if i is not None]


def _sampling_kwargs(temperature: float, top_p: float) -> dict:
    """Pure temperature / nucleus sampling: every other knob neutral (the model's own defaults are
    set aside as well, _own_processors_off)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    neutral = {"repetition_penalty": 1.0, "num_beams": 1}
    if temperature == 0:
        return {"do_sample": False, "temperature": 1.0, "top_p": 1.0, **neutral}
    # top_k=0 switches off the library's default top-k of 50.
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0, **neutral}


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    desc: str = "generating",
    stop_at_eos: bool = True,
    chat_template: bool = False,
    precision: Optional[str] = None,
) -> GenerationResult:
    """Sample one completion per prompt (temperature 0: greedy). Same inputs, batch_size and seed
    give the same texts. stop_at_eos=False keeps generating to max_new_tokens (for benchmarks).
    chat_template: each prompt is sent as one user turn through the tokenizer's chat template,
    exactly as SFT and DPO saw it (model.chat_template). precision: a model.dtype setting whose
    training autocast the forward runs under (alignpipe.train.precision; None: none)."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    start = time.perf_counter()
    texts: list[str] = [""] * len(prompts)
    counts: list[int] = [0] * len(prompts)
    prompt_ids: list[list[int]] = [[] for _ in prompts]
    token_ids: list[list[int]] = [[] for _ in prompts]
    finished: list[bool] = [False] * len(prompts)
    if not prompts:
        return GenerationResult(texts, counts, 0.0, 0.0, prompt_ids, token_ids, finished)
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token (alignpipe.models.load_tokenizer sets pad = eos)")

    eos_ids = _eos_ids(model, tokenizer)
    sampling = _sampling_kwargs(temperature, top_p)
    # An empty EOS list disables stopping; None would be refilled from the model's generation config.
    stop_ids = eos_ids if stop_at_eos else []
    texts_in = [prompt_text(tokenizer, p, chat_template) for p in prompts]
    special = not chat_template  # a rendered template already holds its special tokens
    lengths = [len(ids) for ids in tokenizer(texts_in, add_special_tokens=special)["input_ids"]]
    if 0 in lengths:  # an all-padding row has nothing to attend to
        raise ValueError(f"prompt {lengths.index(0)} is empty after tokenization (this tokenizer adds no BOS)")
    batches = length_sorted_batches(lengths, batch_size)
    devices = [model.device] if model.device.type == "cuda" else []
    compute = lambda: autocast(model.device, precision) if precision is not None else nullcontext()  # noqa: E731
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
            for batch_index, indices in enumerate(batches):
                enc = tokenizer([texts_in[i] for i in indices], return_tensors="pt", padding=True, add_special_tokens=special).to(model.device)
                with torch.random.fork_rng(devices=devices), _own_processors_off(model), compute():
                    torch.manual_seed(batch_seed(seed, batch_index))
                    out = model.generate(
                        input_ids=enc["input_ids"],
                        attention_mask=enc["attention_mask"],
                        max_new_tokens=max_new_tokens,
                        eos_token_id=stop_ids,
                        pad_token_id=tokenizer.pad_token_id,
                        use_cache=True,
                        **sampling,
                    )
                new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
                for j, (row, i) in enumerate(zip(new_tokens, indices)):
                    kept = _until_eos(row, eos_ids) if stop_at_eos else row
                    counts[i] = len(kept)
                    prompt_ids[i] = enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist()
                    token_ids[i] = kept
                    finished[i] = bool(kept) and kept[-1] in eos_ids
                    texts[i] = tokenizer.decode([t for t in kept if t not in eos_ids], skip_special_tokens=True)
                bar.update(len(indices))
                bar.set_postfix(tok_s=f"{sum(counts) / (time.perf_counter() - start):.1f}")
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    seconds = time.perf_counter() - start
    return GenerationResult(texts, counts, sum(counts) / seconds if seconds > 0 else 0.0, seconds, prompt_ids, token_ids, finished)


def prompt_text(tokenizer, prompt: str, chat_template: bool) -> str:
    """The text a prompt is generated from: itself, or one user turn rendered with the chat template."""
    if not chat_template:
        return prompt
    return tokenizer.apply_chat_template(as_chat(prompt, True), tokenize=False, add_generation_prompt=True)


def _until_eos(tokens: list[int], eos_ids: list[int]) -> list[int]:
    """The generated tokens through the first EOS (HF pads finished rows with pad, which may equal EOS)."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: position + 1]
    return tokens
