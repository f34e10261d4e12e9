"""The causal LM inside a wrapper, and its text config: what every module that inspects a model reads.

A PEFT (LoRA) wrapper hides the transformers model behind `get_base_model()`; multimodal and
composite configs keep the language model's settings (layer types, windows, logit scales) in their
text config.
"""
from __future__ import annotations

from torch import nn


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model itself: a PEFT wrapper's base model, else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_config(model: nn.Module):
    """The language model's config: the text config where the model has one, else its config."""
    config = base_model(model).config
    try:
        return config.get_text_config()
    except (AttributeError, ValueError):  # no text config, or several (encoder-decoder styles)
        return config
