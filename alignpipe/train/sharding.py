"""FSDP2 (torch's `fully_shard`) for the training loop, asked for by an accelerate config
(`distributed_type: FSDP`, `fsdp_version: 2`) and applied here, on CUDA and on CPU over gloo.

accelerate's own FSDP wrapping is not used: on CPU it silently falls back to data parallel, it
wraps only the layer class it is told, and the loop's checkpoints need full state dicts. Here:
- each decoder layer of the loaded model (its `_no_split_modules`, or the config's
  `fsdp_transformer_layer_cls_to_wrap`) is one FSDP unit, and the whole model the root unit
  (embeddings, final norm, LM head), gathered by the model's forward, which SequenceScorer calls;
- clipping runs over the sharded gradients (one global norm, as without sharding);
- checkpoints and the published model are full state dicts, gathered on rank 0.
Each accelerate FSDP setting is honoured or refused with one line naming it.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from alignpipe.model_parts import base_model

# accelerate's FSDP_* variables (written by `accelerate launch` from fsdp_config) -> (config key,
# accepted values; None: the variable may be absent). accelerate writes defaults for keys a
# config leaves out (e.g. cpu_ram_efficient_loading: true), so those must be set explicitly.
_ACCEPTED: dict[str, tuple[str, Optional[set[str]]]] = {
    "FSDP_VERSION": ("fsdp_version", {"2"}),
    "FSDP_SHARDING_STRATEGY": ("fsdp_sharding_strategy", {"FULL_SHARD", "1"}),
    "FSDP_OFFLOAD_PARAMS": ("fsdp_offload_params", {"false"}),
    "FSDP_MIN_NUM_PARAMS": ("fsdp_min_num_params", {"100000000"}),  # size-based wrapping is refused
    "FSDP_AUTO_WRAP_POLICY": ("fsdp_auto_wrap_policy", {"TRANSFORMER_BASED_WRAP"}),
    "FSDP_BACKWARD_PREFETCH": ("fsdp_backward_prefetch", {"BACKWARD_PRE"}),  # FSDP2's own prefetch
    "FSDP_STATE_DICT_TYPE": ("fsdp_state_dict_type", {"FULL_STATE_DICT"}),
    "FSDP_FORWARD_PREFETCH": ("fsdp_forward_prefetch", {"false"}),
    "FSDP_USE_ORIG_PARAMS": ("fsdp_use_orig_params", {"true"}),  # what FSDP2 always does
    "FSDP_CPU_RAM_EFFICIENT_LOADING": ("fsdp_cpu_ram_efficient_loading", {"false"}),  # every rank loads
    "FSDP_ACTIVATION_CHECKPOINTING": ("fsdp_activation_checkpointing", {"false"}),  # *.gradient_checkpointing
    "FSDP_ACTIVATION_CHECKPOINTING_OFFLOAD": ("fsdp_activation_checkpointing_offload", {"false"}),
    "FSDP_SYNC_MODULE_STATES": ("fsdp_sync_module_states", {"true", "false"}),
    "FSDP_RESHARD_AFTER_FORWARD": ("fsdp_reshard_after_forward", {"true", "false"}),
    "FSDP_TRANSFORMER_CLS_TO_WRAP": ("fsdp_transformer_layer_cls_to_wrap", None),
}


@dataclass(frozen=True)
class FSDPSettings:
    layer_classes: tuple[str, ...]  # empty: the model's own _no_split_modules
    reshard_after_forward: bool
    sync_module_states: bool


def fsdp_settings(env: Optional[dict[str, str]] = None) -> Optional[FSDPSettings]:
    """The FSDP settings of this launch, None without FSDP; a ValueError naming any setting that
    alignpipe would otherwise ignore."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    for name, value in sorted(env.items()):
        if not name.startswith("FSDP_"):
            continue
        key, accepted = _ACCEPTED.get(name, (name.lower(), set()))
        if accepted is not None and value not in accepted:
            allowed = " or ".join(sorted(accepted)) if accepted else "unset"
            raise ValueError(f"accelerate fsdp_config {key}: '{value}' is not supported by alignpipe's FSDP2 training (use {allowed})")
    classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    return FSDPSettings(
        layer_classes=classes,
        reshard_after_forward=env.get("FSDP_RESHARD_AFTER_FORWARD", "true") == "true",
        sync_module_states=env.get("FSDP_SYNC_MODULE_STATES", "true") == "true",
    )


def shard(model: nn.Module, settings: FSDPSettings) -> None:
    """Shard `model` in place: its parameters become DTensor shards (make the optimizer after)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from alignpipe.logprobs import runs_model_forward

    if not runs_model_forward(model):
        raise ValueError(f"FSDP: {type(base_model(model)).__name__}.forward takes no logits_to_keep, so scoring would bypass the root unit")
    if settings.sync_module_states:  # every rank starts from rank 0's weights
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)
    names = settings.layer_classes or tuple(getattr(base_model(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"FSDP: no decoder layers {list(names)} in {type(base_model(model)).__name__}; "
            "set fsdp_transformer_layer_cls_to_wrap to its layer class"
        )
    for layer in layers:
        fully_shard(layer, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(model)  # the root unit: embeddings, final norm, LM head; gathered from forward until backward


def is_sharded_tensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def is_sharded(model: nn.Module) -> bool:
    return any(is_sharded_tensor(p) for p in model.parameters())


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: Optional[float]) -> float:
    """Clip to one global norm, sharded (DTensor) gradients included; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm or math.inf)
    return float(norm.full_tensor() if is_sharded_tensor(norm) else norm)


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_state(model: nn.Module, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(trainable weights, optimizer state) as full CPU tensors keyed by parameter name: the same
    for 1 process, DDP or FSDP. Every process calls it (it gathers shards); rank 0's is complete."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    gathered = get_model_state_dict(model, options=_full_options(ignore_frozen_params=True))  # LoRA: adapters only
    weights = {n: t.contiguous() for n, t in gathered.items() if n in trainable}
    return weights, get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_full_state(model: nn.Module, optimizer, weights: dict[str, torch.Tensor], optim_state: dict) -> None:
    """Inverse of full_state, on every process: each keeps its own shard of the full tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=is_sharded(model), strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def unsharded_copy(model: nn.Module) -> Optional[nn.Module]:
    """The model as one process would hold it: itself when not sharded; under FSDP a plain copy
    built from the gathered full state on rank 0 (None on other ranks). Every process calls it."""
    if not is_sharded(model):
        return model
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from transformers import AutoModelForCausalLM

    state = get_model_state_dict(model, options=_full_options())
    if dist.get_rank() != 0:
        return None
    from transformers.initialization import no_init_weights

    base = base_model(model)
    with no_init_weights():  # every weight is overwritten from the gathered state
        plain = AutoModelForCausalLM.from_config(base.config, dtype=torch.float32, attn_implementation=base.config._attn_implementation)
    plain.tie_weights()  # skipped with the initialization
    if hasattr(model, "peft_config"):
        from peft import get_peft_model

        plain = get_peft_model(plain, copy.deepcopy(model.peft_config[model.active_adapter]))
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = {n for n, _ in plain.named_parameters(remove_duplicate=False)} - {n for n, _ in plain.named_parameters()}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"FSDP: the gathered state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return plain.eval()
