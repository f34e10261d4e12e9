"""One numeric regime for training and for the reference log-probs it is compared with.

Weights stay fp32; the forward runs under the autocast that `model.dtype` names: "bfloat16" bf16
autocast, "float32" none, "auto" bf16 on CUDA and none on CPU. The reference stage scores the SFT
model with the same weights and the same autocast, so at step 0 the policy's log-probs equal the
stored reference ones and the DPO loss is exactly log 2 (pure-bf16 reference weights against an
autocast fp32 policy are off by bf16 rounding). The LM head runs in fp32 inside autocast either
way (alignpipe.logprobs).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import ContextManager, Sequence

import torch

# device type -> the autocast dtype of its training forward under model.dtype "auto"; absent: fp32
AUTO_AUTOCAST: dict[str, torch.dtype] = {"cuda": torch.bfloat16}
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast_dtype(device_type: str, setting: str = "auto") -> torch.dtype | None:
    """model.dtype -> the autocast dtype of the training forward on this device (None: plain fp32)."""
    if setting == "auto":
        return AUTO_AUTOCAST.get(device_type)
    return {"float32": None, "bfloat16": torch.bfloat16}[setting]


def autocast(device: torch.device | str, setting: str = "auto") -> ContextManager:
    """The autocast of a training forward on `device` (used by the loop and the reference stage)."""
    device_type = torch.device(device).type
    dtype = autocast_dtype(device_type, setting)
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext()


def check_launch_precision(device: torch.device | str, setting: str = "auto") -> None:
    """accelerate's `mixed_precision` (from a config file or --mixed_precision) must be 'no' or
    what the loop does anyway on this device: precision is alignpipe's, never silently another."""
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    ours = _DTYPE_NAMES.get(autocast_dtype(torch.device(device).type, setting), "no")
    if asked not in ("no", ours):
        raise ValueError(
            f"accelerate mixed_precision '{asked}' is not supported: alignpipe trains with fp32 weights and "
            f"{'bf16 autocast' if ours == 'bf16' else 'no autocast'} on {torch.device(device).type} "
            "(set mixed_precision: no, or bf16 on CUDA)"
        )


def resolve_reference_prefix_sharing(model, pairs: Sequence, pad_id: int, mode: str, *, precision: str = "auto", say=None) -> str:
    """dpo.prefix_sharing decided once, by the reference stage, under the training autocast: 'auto'
    becomes 'on' or 'off' (alignpipe.dpo.scoring.resolve_prefix_sharing). The reference stage stores
    the decision with the log-probs, and DPO trains in the layout they were computed in."""
    from alignpipe.dpo.scoring import resolve_prefix_sharing

    kwargs = {} if say is None else {"say": say}
    with torch.no_grad(), autocast(next(model.parameters()).device, precision):
        return resolve_prefix_sharing(model, pairs, pad_id, mode, **kwargs)


def reference_pair_logps(
    model, pairs: Sequence, pad_id: int, *, batch_size: int, precision: str = "auto", prefix_sharing: str = "auto",
    packing: bool = False, desc: str | None = None,
):
    """(chosen, rejected) log-probs as the policy computes them at step 0: the SFT model in fp32
    under the training autocast (no grad, eval mode: no dropout, as in training), with the same
    attention layout (dpo.prefix_sharing, dpo.packing, model.attention) as training."""
    from alignpipe.dpo.scoring import tokenized_pair_logps

    wrong = {p.dtype for p in model.parameters()} - {torch.float32}
    if wrong:
        raise ValueError(f"reference log-probs need the fp32 weights training starts from, not {sorted(map(str, wrong))}")
    with autocast(next(model.parameters()).device, precision):
        return tokenized_pair_logps(
            model, pairs, pad_id, batch_size=batch_size, prefix_sharing=prefix_sharing, packing=packing, desc=desc
        )
