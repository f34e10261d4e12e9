"""The attention mask a model takes for a batch's layout: one rule, realized for each attention kernel.

A query token may attend to a key token when both are in the same sequence of their row, the key
is not after the query, the query is not in a rejected branch looking at a chosen one, and, in a
layer with a sliding window W, the key is fewer than W positions back (`may_attend`; positions are
the sequence's own, so each sequence gets the window its own forward would). A model whose layers
differ in window gets one mask per layer type (the dict transformers' layer_types models take). sdpa takes the rule as a dense boolean [rows, 1, L, L] mask, which rules out its
FlashAttention kernels; eager attention as an additive float mask; FlexAttention as a block mask,
whose kernel skips every block no query may see, so a packed row costs what its sequences cost
rather than its width squared. Batches without a layout (one causal sequence per row) pass the
plain 2-D padding mask, which every attention implementation takes.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from alignpipe.batching import CHOSEN, REJECTED, LogpBatch, Packing
from alignpipe.model_parts import base_model, text_config

LAYOUT_ATTENTION = ("sdpa", "eager", "flex_attention")  # implementations that take a custom mask
FLEX_BLOCK_SIZE = 128


def may_attend(seq_q, branch_q, seq_k, branch_k, q, k, pos_q=None, pos_k=None, window: int | None = None):
    """The rule, elementwise over broadcastable tensors (a dense mask) or over scalars (a mask_mod);
    with a window, keys at positions pos_k > pos_q - window only (transformers' sliding_window_overlay)."""
    allowed = (seq_q == seq_k) & (k <= q) & ~((branch_q == REJECTED) & (branch_k == CHOSEN))
    return allowed if window is None else allowed & (pos_k > pos_q - window)


def attention_implementation(model: nn.Module) -> str:
    return getattr(base_model(model).config, "_attn_implementation", None) or "eager"


def takes_layout_mask(model: nn.Module) -> bool:
    """Prefix sharing and packing need a custom mask and position ids: sdpa, eager and flex take them,
    in a model whose every layer the mask governs (layout_refusal)."""
    return layout_refusal(model) is None


MASKED_LAYER_TYPES = ("full_attention", "sliding_attention")  # layer_types a layout mask can govern


@functools.cache
def _backbone_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _backbone(model: nn.Module) -> nn.Module | None:
    lm = base_model(model)
    return getattr(lm, getattr(lm, "base_model_prefix", ""), None)


def layout_refusal(model: nn.Module) -> str | None:
    """Why a layout mask would not give this model's own per-sequence forward (None: it would). The
    mask replaces the model's own: every layer must be attention that the mask fully governs, windows
    included (a sliding window goes into the mask, per layer type where layers differ)."""
    kind = attention_implementation(model)
    if kind not in LAYOUT_ATTENTION:
        return f"attention '{kind}' cannot take its mask (needs {', '.join(LAYOUT_ATTENTION)})"
    backbone = _backbone(model)
    name = type(backbone).__name__
    if backbone is None or "position_ids" not in inspect.signature(type(backbone).forward).parameters:
        return f"{name} takes no position ids (not an attention model whose mask alignpipe can set)"
    config = text_config(model)
    types = getattr(config, "layer_types", None)
    if types:
        other = sorted(set(types) - set(MASKED_LAYER_TYPES))
        if other:
            return f"{name} has {', '.join(other)} layers, which a per-sequence attention mask does not govern"
        if len(set(types)) > 1 and not _takes_mask_per_layer_type(type(backbone)):
            return f"{name} has full and sliding-window layers but takes one mask for all of them"
    elif getattr(config, "sliding_window", None) is not None and "create_sliding_window_causal_mask" not in _backbone_source(type(backbone)):
        return f"{name} applies config.sliding_window={config.sliding_window} in its own way, which the layout mask cannot carry"
    conv = next((n for n, m in backbone.named_modules() if isinstance(m, nn.Conv1d)), None)
    if conv is not None:  # Mamba/SSM, short-conv and linear-attention mixers: they run along the row
        return f"{name} has a convolution along the sequence ({conv}), which mixes tokens across a row's sequences"
    if "local" in (getattr(config, "attention_layers", None) or ()):  # GPT-Neo: windows by row index, inside attention
        return f"{name} has local attention layers (window_size={getattr(config, 'window_size', None)}) windowed by row index, not by sequence position"
    return None


def _takes_mask_per_layer_type(cls: type) -> bool:
    """Whether the backbone takes `attention_mask` as a {layer type: mask} dict (transformers' models
    with layer_types build one mask per type unless handed that dict)."""
    source = _backbone_source(cls)
    return "isinstance(causal_mask_mapping := attention_mask, dict)" in source or "isinstance(attention_mask, dict)" in source


def attention_windows(model: nn.Module) -> dict[str | None, int | None]:
    """The sliding window of the mask each layer takes: {None: window} when one mask serves every
    layer, else {layer type: window} (window None: none). For models that take a layout mask."""
    config = text_config(model)
    types = getattr(config, "layer_types", None)
    if not types:
        return {None: getattr(config, "sliding_window", None)}
    windows = {t: (config.sliding_window if t == "sliding_attention" else None) for t in set(types)}
    return {None: next(iter(windows.values()))} if len(set(windows.values())) == 1 else windows


def packing_for(model, packing: bool, setting: str = "packing") -> Packing:
    """The packing this model's attention does best, or a one-line error when it takes no layout mask.
    Under a dense mask a row costs its width squared: rows no wider than the longest sequence. Under
    FlexAttention masked blocks are skipped: one row, no padding."""
    if not packing:
        return "off"
    if attention_implementation(model) not in LAYOUT_ATTENTION:
        raise ValueError(f"{setting}: needs attention {', '.join(LAYOUT_ATTENTION)}; this model uses '{attention_implementation(model)}'")
    if (why := layout_refusal(model)) is not None:
        raise ValueError(f"{setting}: cannot pack this model: {why}")
    return "one_row" if attention_implementation(model) == "flex_attention" else "to_longest"


def attention_path(model: nn.Module, layout: bool) -> str:
    """What scoring runs: 'concatenated' (plain rows, 2-D padding mask), 'dense' or 'flex' (a layout
    mask as a dense tensor or a FlexAttention block mask)."""
    if not layout:
        return "concatenated"
    return "flex" if attention_implementation(model) == "flex_attention" else "dense"


def dense_mask(batch: LogpBatch, window: int | None = None) -> torch.Tensor:
    """Boolean [rows, 1, L, L], True where the rule allows; padding attends to earlier padding only
    (so no softmax row is empty: padding sits at position 0)."""
    seq, branch, pos = batch.sequence_ids, batch.branch_ids, batch.position_ids
    idx = torch.arange(seq.shape[1], device=seq.device)
    allowed = may_attend(
        seq[:, :, None], branch[:, :, None], seq[:, None, :], branch[:, None, :], idx[:, None], idx[None, :],
        pos[:, :, None], pos[:, None, :], window,
    )  # fmt: skip
    return allowed[:, None]


def flex_block_mask(batch: LogpBatch, window: int | None = None):
    """The rule as a FlexAttention BlockMask over the batch's rows, built on the batch's device."""
    create_block_mask = flex_api()["create_block_mask"]
    seq, branch, pos = batch.sequence_ids, batch.branch_ids, batch.position_ids

    def mask_mod(b, h, q, k):
        return may_attend(seq[b, q], branch[b, q], seq[b, k], branch[b, k], q, k, pos[b, q], pos[b, k], window)

    rows, width = seq.shape
    kwargs = {"BLOCK_SIZE": FLEX_BLOCK_SIZE}
    if "_compile" in inspect.signature(create_block_mask).parameters:
        kwargs["_compile"] = seq.device.type == "cuda"  # compiled: no [rows, L, L] intermediate on the GPU
    return create_block_mask(mask_mod, rows, None, width, width, device=seq.device, **kwargs)


def model_attention_mask(model: nn.Module, batch: LogpBatch, dtype: torch.dtype):
    """What to pass as `attention_mask` for this batch to this model: one mask, or one per layer type."""
    if not batch.has_layout:
        return batch.attention_mask
    kind = attention_implementation(model)
    if kind not in LAYOUT_ATTENTION:
        raise ValueError(f"attention '{kind}' cannot take a prefix-shared or packed batch (needs one of {', '.join(LAYOUT_ATTENTION)})")
    if (why := layout_refusal(model)) is not None:
        raise ValueError(f"a prefix-shared or packed batch cannot be scored by this model: {why}")
    windows = attention_windows(model)
    masks = {w: _layout_mask(kind, batch, w, dtype) for w in set(windows.values())}
    return masks[windows[None]] if None in windows else {t: masks[w] for t, w in windows.items()}


def _layout_mask(kind: str, batch: LogpBatch, window: int | None, dtype: torch.dtype):
    if kind == "flex_attention":
        return flex_block_mask(batch, window)
    mask = dense_mask(batch, window)
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


@contextmanager
def forward_context(model: nn.Module) -> Iterator[None]:
    """Where a model's forward runs for scoring. FlexAttention on CPU runs uncompiled there (its
    reference implementation: exact for any shape): transformers compiles flex_attention once, the
    second distinct batch shape makes torch recompile it with dynamic shapes, and in torch 2.13 that
    compile fails on CPU (InductorError), so a reference or KL pass over real data would crash."""
    device = next(model.parameters()).device
    if attention_implementation(model) != "flex_attention" or device.type != "cpu" or not hasattr(torch.compiler, "set_stance"):
        yield
        return
    with warnings.catch_warnings(), torch.compiler.set_stance("force_eager"):
        warnings.filterwarnings("ignore", message=".*flex_attention.*without torch.compile")  # slow, known: CPU
        yield


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
