"""Log-probabilities of chosen tokens without materializing [batch, seq, vocab] logits.

Only the hidden states that predict completion tokens are gathered, and the LM head runs over
them in chunks: forward keeps one [chunk, vocab] block alive at a time, backward recomputes it.
This is what makes a 49k-vocabulary model cheap to train on short completions.
"""
from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Callable

import torch
from torch import nn

from alignpipe.attention import attention_implementation, forward_context, model_attention_mask  # noqa: F401 (re-exported)
from alignpipe.model_parts import base_model, text_config

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB in fp32)
KEEP_SOFTMAX_BYTES = 256 << 20  # below this, backward reuses the forward's softmax instead of recomputing


class _ChunkedSelectiveLogSoftmax(torch.autograd.Function):
    """Forward chunk by chunk; backward needs softmax(logits) per chunk. With `keep` the forward's
    softmax is kept for backward (one [chunk, vocab] matmul saved per chunk, a quarter of the LM
    head's cost); otherwise backward recomputes it chunk by chunk. The caller decides `keep`:
    inside forward, autograd has already switched grad mode off."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, keep: bool):
        w = weight.to(hidden.dtype)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 at least, fp64 stays fp64
        n = hidden.shape[0]
        out = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        probs = []
        for s in range(0, n, chunk):
            logits = (hidden[s : s + chunk] @ w.T).to(acc)
            t = targets[s : s + chunk, None]
            logp = torch.log_softmax(logits, dim=-1)  # one fused pass: fewer trips over [chunk, vocab] than logsumexp
            out[s : s + chunk] = logp_t = logp.gather(1, t).squeeze(1)
            lse[s : s + chunk] = logits.gather(1, t).squeeze(1) - logp_t
            del logits
            if keep:
                probs.append(logp.exp_())
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.probs = chunk, probs
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk, probs = ctx.chunk, ctx.probs
        w = weight.to(hidden.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None
        rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
        for c, s in enumerate(range(0, hidden.shape[0], chunk)):
            h, t, g = hidden[s : s + chunk], targets[s : s + chunk], grad_out[s : s + chunk].to(lse.dtype)
            # d logp_t / d logits = onehot(t) - softmax
            p = probs[c] if probs else torch.exp((h @ w.T).to(lse.dtype) - lse[s : s + chunk, None])
            dlogits = p.mul_(-g[:, None])
            dlogits[rows[: h.shape[0]], t] += g
            dlogits = dlogits.to(hidden.dtype)
            if need_h:
                grad_h[s : s + chunk] = dlogits @ w
            if need_w and grad_w is None:
                grad_w = (dlogits.T @ h).to(lse.dtype)
            elif need_w and grad_w.dtype == h.dtype:
                grad_w.addmm_(dlogits.T, h)  # accumulate in place: no [vocab, hidden] temporary
            elif need_w:
                grad_w += (dlogits.T @ h).to(grad_w.dtype)
        ctx.probs = None
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None


@functools.cache
def _autocast_safe(device_type: str) -> type[torch.autograd.Function]:
    """The Function for tensors on `device_type`, run in fp32 inside autocast: torch.amp's
    custom_fwd casts only inputs on the device type it was given, so each type gets its own."""
    return type(
        f"_ChunkedSelectiveLogSoftmax_{device_type}",
        (_ChunkedSelectiveLogSoftmax,),
        {
            "forward": staticmethod(
                torch.amp.custom_fwd(_ChunkedSelectiveLogSoftmax.forward, device_type=device_type, cast_inputs=torch.float32)
            ),
            "backward": staticmethod(torch.amp.custom_bwd(_ChunkedSelectiveLogSoftmax.backward, device_type=device_type)),
        },
    )


def selective_log_softmax(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int | None = None,
    keep_bytes: int = KEEP_SOFTMAX_BYTES,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[i, targets[i]] for each row i, in fp32, chunked over rows.

    Under autocast the LM head runs in fp32 (inputs cast up), as the log-probs of a 49k-way
    softmax summed over a completion are too coarse in bf16. The softmax is kept for backward
    when a backward can happen and the whole [N, vocab] block fits `keep_bytes`."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    chunk = chunk or max(1, DEFAULT_CHUNK_ELEMENTS // weight.shape[0])
    acc_bytes = torch.finfo(torch.promote_types(hidden.dtype, torch.float32)).bits // 8
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    keep = grad and hidden.shape[0] * weight.shape[0] * acc_bytes <= keep_bytes
    return _autocast_safe(hidden.device.type).apply(hidden, weight, targets, chunk, keep)


def naive_selective_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The textbook computation (full logits, full log_softmax); kept as the reference in tests."""
    logp = torch.log_softmax((hidden @ weight.to(hidden.dtype).T).float(), dim=-1)
    return logp.gather(1, targets[:, None]).squeeze(1)


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(backbone returning last_hidden_state, lm_head) of an HF causal LM, PEFT-wrapped or not; a
    one-line TypeError for a head this module would score wrongly (see head_scale)."""
    lm = base_model(model)
    backbone = getattr(lm, lm.base_model_prefix, None)
    head = lm.get_output_embeddings()
    if backbone is None or head is None:
        raise TypeError(f"{type(lm).__name__}: cannot find the backbone and LM head")
    if getattr(head, "bias", None) is not None:
        raise TypeError(f"{type(lm).__name__}: LM heads with a bias are not supported")
    if type(lm).__name__ in OTHER_HEADS:
        raise TypeError(f"{type(lm).__name__}: {OTHER_HEADS[type(lm).__name__]}: not supported")
    head_scale(lm)
    return backbone, head


# What some architectures do to the logits after the LM head, beyond `hidden @ W.T`. A linear factor f
# (logits = f * hidden @ W.T; the head has no bias) is applied to the gathered hidden states instead,
# which is exact and reaches everything that scores through `gathered_hidden` (DPO, reference, SFT,
# KL). By model type (the text config's): the config attributes read and the factor they give.
HEAD_SCALES: dict[str, tuple[tuple[str, ...], Callable[[Any], float]]] = {
    **dict.fromkeys(
        ("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared"),
        (("logits_scaling",), lambda c: 1.0 / c.logits_scaling),  # logits / logits_scaling
    ),
    "hyperclovax": (("logits_scaling",), lambda c: float(c.logits_scaling)),  # logits * logits_scaling (muP)
    "minicpm3": (("dim_model_base",), lambda c: c.dim_model_base / c.hidden_size),  # hidden / (hidden_size / dim_model_base)
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe"), (("logit_scale",), lambda c: float(c.logit_scale))),
    "cohere_compass_text": (("logit_scale",), lambda c: 1.0 if c.logit_scale is None else float(c.logit_scale)),
    "falcon_h1": (("lm_head_multiplier",), lambda c: float(c.lm_head_multiplier)),
    "inkling_text": (("logits_mup_width_multiplier",), lambda c: 1.0 / c.logits_mup_width_multiplier),
    "mpt": (("logit_scale",), lambda c: 1.0),  # a config field MptForCausalLM does not read
}
# Config attributes that look like head settings but act elsewhere: in the backbone (which runs the
# model's own code), in routing or generation, or covered by the bias check above.
NOT_THE_HEAD = frozenset({
    "attn_logit_softcapping", "mlp_gate_softcap", "mlp_up_softcap", "gate_soft_cap", "moe_router_logit_softcapping",
    "router_logit_softcapping", "mup_enabled", "output_router_logits", "num_logits_to_keep", "chunk_size_lm_head",
    "lm_head_bias",
})  # fmt: skip
# Any other attribute with such a name must be neutral (None, 1, False); a softcap is never applied here
# (tanh is not linear, and KL scoring multiplies by the head's weight itself): final_logit_softcapping
# (Gemma 2, Gemma 3n, VaultGemma, NanoChat, Beam, Inkling2), logits_soft_cap (RecurrentGemma),
# output_logit_soft_cap (xLSTM), and unpadded_vocab_size below the head's rows (Inkling) are refused.
HEAD_ATTRIBUTE = re.compile(r"logit|lm_head|soft_?cap|output_mult|mup|width_mult|dim_model_base|unpadded_vocab", re.I)
# Causal LMs whose output embeddings are not what their forward applies to the backbone's output.
OTHER_HEADS = {
    "ModernBertDecoderForCausalLM": "its logits are decoder(lm_head(hidden)), a transform before the output embeddings",
    "Gemma4AssistantForCausalLM": "its logits come from a masked embedding lookup",
    "Gemma4UnifiedAssistantForCausalLM": "its logits come from a masked embedding lookup",
}


def head_scale(model: nn.Module) -> float:
    """The factor this model multiplies its logits by after the LM head (1.0 for most), or a one-line
    TypeError naming the config attribute when the model changes its logits in another way."""
    lm = base_model(model)
    config = text_config(lm)
    read, factor = HEAD_SCALES.get(getattr(config, "model_type", None), ((), lambda c: 1.0))
    vocab = lm.get_output_embeddings().weight.shape[0]
    for attr, value in vars(config).items():
        if attr in read or attr in NOT_THE_HEAD or not HEAD_ATTRIBUTE.search(attr) or isinstance(value, (dict, list)):
            continue
        if "cap" in attr.lower():  # a cap is off only as None (a cap of 1 is a cap)
            neutral = value is None
        else:  # a factor of 1, or a flag off; a vocabulary cut at the head's own size
            neutral = value in (None, False, 1) or (attr == "unpadded_vocab_size" and value == vocab)
        if not neutral:
            raise TypeError(f"{type(lm).__name__}: config.{attr}={value!r} changes the logits in a way alignpipe does not apply (not supported)")
    return factor(config)


class SequenceScorer(nn.Module):
    """Wraps a causal LM so forward(batch) returns the summed log-prob of each segment.

    It is a module (not a function) so that DDP can wrap it: gradients then sync as usual.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, batch) -> torch.Tensor:
        picked, head = gathered_hidden(self.lm, batch)
        token_logps = selective_log_softmax(picked, head.weight, batch.targets)
        sums = torch.zeros(batch.num_segments, dtype=token_logps.dtype, device=token_logps.device)  # fp32, or fp64 for fp64 models
        return sums.index_add(0, batch.segment, token_logps)


def gathered_hidden(model: nn.Module, batch) -> tuple[torch.Tensor, nn.Module]:
    """The backbone's hidden states at the positions that predict the batch's targets, times the
    model's logit scale (head_scale), and the LM head: `hidden @ head.weight.T` are the model's logits.
    The attention mask is built here, on the batch's device, in the form the model's attention takes."""
    backbone, head = causal_lm_parts(model)
    mask = model_attention_mask(model, batch, head.weight.dtype)
    kwargs = {"input_ids": batch.input_ids, "attention_mask": mask, "use_cache": False}
    if batch.position_ids is not None:
        kwargs["position_ids"] = batch.position_ids
    with forward_context(model):  # FlexAttention on CPU: uncompiled, for any batch shape
        hidden = _backbone_output(model, backbone, kwargs)
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.gather_index)
    scale = head_scale(model)  # the model's own logit scaling, so that picked @ head.weight.T are its logits
    return (picked * scale if scale != 1.0 else picked), head


def _backbone_output(model: nn.Module, backbone: nn.Module, kwargs: dict) -> torch.Tensor:
    """The backbone's last hidden state, from a call of the model's own forward with no logits kept:
    calling the whole model lets hooks on it do their work (FSDP's root unit gathers the embeddings
    and the LM head there), and `logits_to_keep=[]` leaves the LM head an empty [batch, 0] slice."""
    if not runs_model_forward(model):
        return backbone(**kwargs).last_hidden_state
    out = {}

    def keep(module, args, output) -> None:
        out["hidden"] = output.last_hidden_state

    handle = backbone.register_forward_hook(keep)
    try:
        model(**kwargs, logits_to_keep=torch.zeros(0, dtype=torch.long, device=kwargs["input_ids"].device))
    finally:
        handle.remove()
    if "hidden" not in out:
        raise TypeError(f"{type(model).__name__}: its forward does not call its backbone as a module (encoder-decoder style decoders are not supported)")
    return out["hidden"]


def runs_model_forward(model: nn.Module) -> bool:
    """Whether scoring goes through the model's own forward (it takes `logits_to_keep`), or else
    calls the backbone directly."""
    return _takes_logits_to_keep(type(base_model(model)))


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters
