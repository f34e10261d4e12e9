"""Training without dropout, as the DPO paper's trainers do (policy and reference alike).

The reference log-probs are taken in eval mode; a policy trained with dropout on would differ
from them at step 0, so the first DPO loss would not be log 2 and the implicit rewards not 0.
Dropout lives in three places in HF models, all zeroed here for the duration of training:
`nn.Dropout` modules (GPT-2's attn/resid/embd dropout), float attributes that attention passes
to sdpa/eager/flash as `dropout=` (Llama's and GPT-NeoX's `attention_dropout`), and config
values a few models read in forward (GPT-Neo, Persimmon). Configs are restored afterwards, so
a published model keeps its dropout settings. LoRA's `lora_dropout` is an explicit setting and
is left as configured: the context yields its rate (0.0 when none), and the loop says in one line
that it stays on. Step 0 is unaffected (LoRA's B starts at zero, so its dropped-out branch adds 0).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

log = logging.getLogger(__name__)


def _is_dropout_name(name: str) -> bool:
    return "dropout" in name or name.endswith("pdrop") or name == "attn_drop"


def _is_lora(name: str) -> bool:
    return "lora_" in name


@contextmanager
def dropout_disabled(model: nn.Module) -> Iterator[float]:
    """Every dropout of `model` but LoRA's is 0 inside the block, and as before after it; yields the
    largest LoRA dropout rate left on (0.0: none)."""
    saved: list[tuple[object, str, float]] = []

    def zero(obj: object, attr: str) -> None:
        value = getattr(obj, attr)
        if isinstance(value, float) and value != 0.0:
            saved.append((obj, attr, value))
            setattr(obj, attr, 0.0)

    configs = {}
    lora_rates = [0.0]
    for name, module in model.named_modules():
        if _is_lora(name):
            lora_rates += [module.p] if isinstance(module, _DropoutNd) else []
            continue
        if isinstance(module, _DropoutNd):
            zero(module, "p")
        for attr in list(vars(module)):
            if _is_dropout_name(attr) and not _is_lora(attr):
                zero(module, attr)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            configs[id(config)] = config
    for config in configs.values():
        for attr in list(vars(config)):
            if _is_dropout_name(attr):
                zero(config, attr)
    if saved:
        found = sorted({f"{type(obj).__name__}.{attr}={value:g}" for obj, attr, value in saved})
        log.info("training with dropout off, as the DPO paper's trainers (was %s)", ", ".join(found))
    try:
        yield max(lora_rates)
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
