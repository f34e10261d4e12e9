"""The attention mask a model takes for a batch's layout: one rule, realized for each attention kernel.

A query token may attend to a key token when both are in the same sequence of their row, the key
is not after the query, and the query is not in a rejected branch looking at a chosen one
(`may_attend`). sdpa takes the rule as a dense boolean [rows, 1, L, L] mask, which rules out its
FlashAttention kernels; eager attention as an additive float mask; FlexAttention as a block mask,
whose kernel skips every block no query may see, so a packed row costs what its sequences cost
rather than its width squared. Batches without a layout (one causal sequence per row) pass the
plain 2-D padding mask, which every attention implementation takes.
"""
from __future__ import annotations

import functools
import inspect
import warnings

import torch
from torch import nn

from alignpipe.batching import CHOSEN, REJECTED, LogpBatch, Packing

LAYOUT_ATTENTION = ("sdpa", "eager", "flex_attention")  # implementations that take a custom mask
FLEX_BLOCK_SIZE = 128


def may_attend(seq_q, branch_q, seq_k, branch_k, q, k):
    """The rule, elementwise over broadcastable tensors (a dense mask) or over scalars (a mask_mod)."""
    return (seq_q == seq_k) & (k <= q) & ~((branch_q == REJECTED) & (branch_k == CHOSEN))


def attention_implementation(model: nn.Module) -> str:
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(lm.config, "_attn_implementation", None) or "eager"


def takes_layout_mask(model: nn.Module) -> bool:
    """Prefix sharing and packing need a custom mask and position ids: sdpa, eager and flex take them."""
    return attention_implementation(model) in LAYOUT_ATTENTION


def packing_for(model, packing: bool, setting: str = "packing") -> Packing:
    """The packing this model's attention does best, or a one-line error when it takes no layout mask.
    Under a dense mask a row costs its width squared: rows no wider than the longest sequence. Under
    FlexAttention masked blocks are skipped: one row, no padding."""
    if not packing:
        return "off"
    if not takes_layout_mask(model):
        raise ValueError(f"{setting}: needs attention {', '.join(LAYOUT_ATTENTION)}; this model uses '{attention_implementation(model)}'")
    return "one_row" if attention_implementation(model) == "flex_attention" else "to_longest"


def attention_path(model: nn.Module, layout: bool) -> str:
    """What scoring runs: 'concatenated' (plain rows, 2-D padding mask), 'dense' or 'flex' (a layout
    mask as a dense tensor or a FlexAttention block mask)."""
    if not layout:
        return "concatenated"
    return "flex" if attention_implementation(model) == "flex_attention" else "dense"


def dense_mask(batch: LogpBatch) -> torch.Tensor:
    """Boolean [rows, 1, L, L], True where the rule allows; padding attends to earlier padding only
    (so no softmax row is empty)."""
    seq, branch = batch.sequence_ids, batch.branch_ids
    pos = torch.arange(seq.shape[1], device=seq.device)
    allowed = may_attend(seq[:, :, None], branch[:, :, None], seq[:, None, :], branch[:, None, :], pos[:, None], pos[None, :])
    return allowed[:, None]


def flex_block_mask(batch: LogpBatch):
    """The rule as a FlexAttention BlockMask over the batch's rows, built on the batch's device."""
    create_block_mask = flex_api()["create_block_mask"]
    seq, branch = batch.sequence_ids, batch.branch_ids

    def mask_mod(b, h, q, k):
        return may_attend(seq[b, q], branch[b, q], seq[b, k], branch[b, k], q, k)

    rows, width = seq.shape
    kwargs = {"BLOCK_SIZE": FLEX_BLOCK_SIZE}
    if "_compile" in inspect.signature(create_block_mask).parameters:
        kwargs["_compile"] = seq.device.type == "cuda"  # compiled: no [rows, L, L] intermediate on the GPU
    return create_block_mask(mask_mod, rows, None, width, width, device=seq.device, **kwargs)


def model_attention_mask(model: nn.Module, batch: LogpBatch, dtype: torch.dtype):
    """What to pass as `attention_mask` for this batch to this model."""
    if not batch.has_layout:
        return batch.attention_mask
    kind = attention_implementation(model)
    if kind == "flex_attention":
        return flex_block_mask(batch)
    if kind not in LAYOUT_ATTENTION:
        raise ValueError(f"attention '{kind}' cannot take a prefix-shared or packed batch (needs one of {', '.join(LAYOUT_ATTENTION)})")
    mask = dense_mask(batch)
    if kind == "eager":  # eager attention adds the mask to the scores; sdpa takes the boolean as is
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    return mask


@functools.cache
def flex_api() -> dict:
    """FlexAttention's entry points in this torch, or one clear error (it arrived in torch 2.5, and
    its module moved and its signatures grew since)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
    except ImportError as exc:
        raise RuntimeError(f"model.attention 'flex_attention' needs torch >= 2.5 with FlexAttention; this is torch {torch.__version__} ({exc})") from None
    return {"BlockMask": BlockMask, "create_block_mask": create_block_mask, "flex_attention": flex_attention}


@functools.cache
def flex_trains_on(device_type: str) -> bool:
    """Whether FlexAttention has a backward on this device type, tried on a tiny input (torch 2.13
    raises NotImplementedError on CPU, where only its forward runs)."""
    flex = flex_api()["flex_attention"]
    q = torch.randn(1, 1, 16, 16, device=device_type, requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uncompiled flex warns that it is slow: irrelevant for a probe
            flex(q, q, q).sum().backward()
    except NotImplementedError:
        return False
    return True


def check_trainable(model: nn.Module) -> None:
    """One clear line, before training starts, when the model's attention cannot backpropagate here."""
    if attention_implementation(model) != "flex_attention":
        return
    device = next(model.parameters()).device
    if not flex_trains_on(device.type):
        raise ValueError(
            f"model.attention 'flex_attention' cannot train on {device.type}: torch {torch.__version__} has no "
            "FlexAttention backward there (its forward runs, so reference scoring works); use 'sdpa'"
        )
