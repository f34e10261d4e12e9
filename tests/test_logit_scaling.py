"""Models that change their logits after the LM head are scored with that change, or refused in one line.

Every causal LM config transformers ships is searched for attributes that look like head settings
(alignpipe.logprobs.HEAD_ATTRIBUTE): each is applied for its model type, known to act elsewhere, or
refused when not neutral. Tiny random instances of the models that apply a scale are compared, in
float64 where their kernels allow it, with the log-softmax of their own logits, values and gradients.
"""
import logging
import types
import warnings

import pytest
import torch

from alignpipe.batching import collate_examples
from alignpipe.logprobs import HEAD_ATTRIBUTE, HEAD_SCALES, NOT_THE_HEAD, SequenceScorer, gathered_hidden, head_scale
from alignpipe.tokenization import TokenizedExample


def _causal_lm_text_configs():
    """(model_type, text config) for every causal LM transformers maps, default-constructed."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out, failed = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
                try:
                    config = CONFIG_MAPPING[model_type]()
                except Exception:  # a few configs validate their defaults against each other and fail
                    failed.append(model_type)
                    continue
                try:
                    config = config.get_text_config()
                except ValueError:
                    pass
                out.append((model_type, config))
        finally:
            logging.disable(logging.NOTSET)
    assert len(failed) < 0.05 * len(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), failed
    return out


def _stub(config, vocab: int):
    """What head_scale reads of a model: its config and the rows of its output embeddings."""
    head = types.SimpleNamespace(weight=torch.empty(vocab, 1))
    return types.SimpleNamespace(config=config, get_output_embeddings=lambda: head)


def _non_neutral(attr: str, value):
    if attr == "unpadded_vocab_size":
        return 7
    if "cap" in attr.lower():
        return 1.0  # a cap of 1 is not neutral
    return 3.0


def test_every_head_attribute_of_every_causal_lm_config_is_applied_or_refused():
    seen: dict[str, set[str]] = {}
    for model_type, config in _causal_lm_text_configs():
        read, _ = HEAD_SCALES.get(config.model_type, ((), None))
        found = {a: v for a, v in vars(config).items() if HEAD_ATTRIBUTE.search(a) and a not in NOT_THE_HEAD and not isinstance(v, (dict, list))}
        for attr in found:
            seen.setdefault(attr, set()).add(config.model_type)
        try:
            for attr in found:  # one attribute at a time non-neutral, the others not applied set to None
                for other in found:  # through __dict__: strict configs reject None for a float field
                    config.__dict__[other] = found[other] if other in read else None
                config.__dict__[attr] = _non_neutral(attr, found[attr])
                if attr in read:  # applied: the factor follows the attribute
                    assert head_scale(_stub(config, 100)) != 1.0 or config.model_type == "mpt", (model_type, attr)
                else:
                    with pytest.raises(TypeError, match=rf"config\.{attr}="):
                        head_scale(_stub(config, 100))
        finally:
            config.__dict__.update(found)
    # the search finds what the installed transformers is known to have (a broken search would pass vacuously)
    assert {"granite", "granitemoe", "hyperclovax"} <= seen["logits_scaling"]
    assert {"cohere", "cohere2"} <= seen["logit_scale"] and "minicpm3" in seen["dim_model_base"]
    assert {"gemma2", "vaultgemma"} <= seen["final_logit_softcapping"]


def _tiny(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    moe = dict(num_local_experts=4, num_experts_per_tok=2)
    per_type = {
        "granitemoe": moe, "granitemoeshared": {**moe, "shared_intermediate_size": 32}, "cohere2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
        "minicpm3": dict(num_key_value_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16, head_dim=None),
        "inkling_text": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    }  # fmt: skip
    config = AutoConfig.for_model(model_type, **{**small, **per_type.get(model_type, {}), **extra})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


# A non-neutral value of each applied attribute; Granite's real checkpoints use 8 or 16.
SCALED = [
    ("granite", {"logits_scaling": 8.0}),
    ("granitemoe", {"logits_scaling": 16.0}),
    ("granitemoeshared", {"logits_scaling": 8.0}),
    ("hyperclovax", {"logits_scaling": 8.0}),
    ("minicpm3", {"dim_model_base": 8}),
    ("cohere", {"logit_scale": 0.25}),
    ("cohere2", {"logit_scale": 0.25}),
    ("mpt", {"logit_scale": 2.0}),  # read by no code of MptForCausalLM: factor 1
]


@pytest.mark.parametrize("model_type,extra", SCALED, ids=[m for m, _ in SCALED])
def test_scaled_heads_give_the_models_own_log_probs_and_gradients(model_type, extra):
    model = _tiny(model_type, **extra)
    try:
        model = model.double()
        model(input_ids=torch.ones(1, 2, dtype=torch.long))
    except RuntimeError:  # MoE grouped matmuls have no float64 kernel on CPU
        model = model.float()
    dtype = next(model.parameters()).dtype
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.manual_seed(1)
    ids = torch.randint(3, 64, (2, 12))
    prompt = 4
    batch = collate_examples([TokenizedExample(r[:prompt].tolist(), r[prompt:].tolist()) for r in ids], 0)

    logits = model(input_ids=ids).logits
    naive = torch.log_softmax(logits[:, prompt - 1 : -1].double(), -1).gather(2, ids[:, prompt:, None]).squeeze(2).sum(1)
    naive_grads = torch.autograd.grad(naive.sum(), [p for p in model.parameters() if p.requires_grad], allow_unused=True)

    ours = SequenceScorer(model)(batch)
    assert torch.allclose(ours.double(), naive, atol=tol, rtol=0), (ours, naive)
    grads = torch.autograd.grad(ours.sum(), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    for g, n in zip(grads, naive_grads):
        if n is not None:
            assert torch.allclose(g, n, atol=tol * 10, rtol=tol * 10)
    with torch.no_grad():  # what KL scoring multiplies: the gathered hidden states by the head's weight
        hidden, head = gathered_hidden(model, batch)
        assert torch.allclose(hidden @ head.weight.T, logits[:, prompt - 1 : -1].reshape(hidden.shape[0], -1), atol=tol)


@pytest.mark.parametrize("model_type,attr,value", [("gemma2", "final_logit_softcapping", 30.0), ("vaultgemma", "final_logit_softcapping", 30.0)])
def test_softcapped_heads_are_refused_in_one_line(model_type, attr, value):
    model = _tiny(model_type, **{attr: value})
    batch = collate_examples([TokenizedExample([5, 6, 7], [8, 9])], 0)
    with pytest.raises(TypeError, match=rf"^{type(model).__name__}: config\.{attr}={value!r} .*not supported"):
        SequenceScorer(model)(batch)


def test_attention_softcapping_is_the_backbones_and_scores_exactly():
    """attn_logit_softcapping (NOT_THE_HEAD) acts inside attention, which runs the model's own code."""
    model = _tiny("gemma2", final_logit_softcapping=None, attn_logit_softcapping=5.0).double()
    ids = torch.randint(3, 64, (1, 10))
    logits = model(input_ids=ids).logits
    naive = torch.log_softmax(logits[0, 3:-1], -1).gather(1, ids[0, 4:, None]).sum()
    ours = SequenceScorer(model)(collate_examples([TokenizedExample(ids[0, :4].tolist(), ids[0, 4:].tolist())], 0))
    assert torch.allclose(ours[0], naive, atol=1e-9)
