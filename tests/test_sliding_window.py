"""Sliding-window attention under layout masks: the window goes into the rule (per layer type where
layers differ), so prefix-shared and packed scoring equal each sequence's own plain forward; models
whose layers a per-sequence mask does not govern take no layout, said in one line.

Sequences are longer than the window (4), so a mask without the window is visibly wrong (the issue
measured 0.129 nats on a tiny Mistral). Dense masks in float64; FlexAttention forward only (CPU)."""
import logging
import warnings

import pytest
import torch

from alignpipe.attention import attention_windows, layout_refusal, packing_for, takes_layout_mask
from alignpipe.batching import collate_examples, collate_pairs
from alignpipe.dpo.scoring import pair_layout, resolve_prefix_sharing
from alignpipe.logprobs import SequenceScorer
from alignpipe.tokenization import TokenizedExample, TokenizedPair

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
             eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
WINDOWED = {
    "mistral": dict(sliding_window=4),  # every layer windowed, one mask
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),  # layer 0 full, layer 1 windowed
    "gemma3_text": dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=None),
    "gemma2": dict(sliding_window=4, final_logit_softcapping=None),  # Gemma-style alternating local/global layers
}


def _tiny(model_type: str, attention: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{**SMALL, **extra})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            return AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()
        finally:
            logging.disable(logging.NOTSET)


def _pairs() -> list[TokenizedPair]:
    gen = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, 64, (n,), generator=gen).tolist()  # noqa: E731
    return [TokenizedPair(ids(6), ids(5), ids(7)), TokenizedPair(ids(3), ids(8), ids(2)), TokenizedPair(ids(9), ids(1), ids(6))]


@torch.no_grad()
def _own_forward(model, prompt: list[int], completion: list[int]) -> float:
    """The completion's log-prob from the model's own plain forward over [prompt | completion] alone."""
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(completion)))


CASES = [(m, a) for m in WINDOWED for a in ("sdpa", "eager", "flex_attention") if (m, a) != ("gemma2", "sdpa")]  # Gemma 2 has no sdpa


@pytest.mark.parametrize("model_type,attention", CASES)
def test_windowed_layouts_equal_each_sequences_own_forward(model_type, attention):
    model = _tiny(model_type, attention, **WINDOWED[model_type])
    pairs = _pairs()
    plain = "eager" if model_type == "gemma2" else "sdpa"
    model.double().set_attn_implementation(plain)  # the plain forwards in float64 (the flex ones would compile per length)
    own = [_own_forward(model, p.prompt, p.chosen) for p in pairs] + [_own_forward(model, p.prompt, p.rejected) for p in pairs]
    model.set_attn_implementation(attention)
    if attention == "flex_attention":
        model.float()
    tol = {"sdpa": 1e-9, "eager": 1e-5, "flex_attention": 2e-4}[attention]  # eager: its softmax is fp32
    assert takes_layout_mask(model), layout_refusal(model)
    assert 4 in attention_windows(model).values()
    scorer = SequenceScorer(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # uncompiled flex on CPU warns that it is slow
        for shared, packing in [(True, "off"), (False, "to_longest"), (True, "one_row"), (False, "one_row")]:
            got = scorer(collate_pairs(pairs, 0, prefix_sharing=shared, packing=packing)).double()
            assert torch.allclose(got, torch.tensor(own, dtype=torch.float64), atol=tol, rtol=0), (shared, packing, got, own)
        # KL scoring and SFT: completions packed in rows, each with its own positions and window
        examples = [TokenizedExample(p.prompt, p.chosen) for p in pairs]
        got = scorer(collate_examples(examples, 0, packing="one_row")).double()
        assert torch.allclose(got, torch.tensor(own[: len(pairs)], dtype=torch.float64), atol=tol, rtol=0)


def test_the_window_goes_into_the_rule_by_position():
    """A rejected token at position p sees the prompt tokens at positions > p - window, as in its own forward."""
    from alignpipe.attention import dense_mask

    batch = collate_pairs([TokenizedPair([10, 11, 12], [13, 14], [15, 16])], 0, prefix_sharing=True)
    # positions: prompt 0 1 2, chosen 3 4, rejected 3 4
    m = dense_mask(batch, window=2)[0, 0].int().tolist()
    assert m[5] == [0, 0, 1, 0, 0, 1, 0]  # rejected at 3: prompt 2 and itself
    assert m[6] == [0, 0, 0, 0, 0, 1, 1]  # rejected at 4: rejected 3 and itself
    assert m[4] == [0, 0, 0, 1, 1, 0, 0]  # chosen at 4: chosen 3 and itself


def _hybrid():
    return _tiny("lfm2", "sdpa", layer_types=["conv", "full_attention"], num_key_value_heads=2)


def test_models_the_mask_does_not_govern_take_no_layout_and_say_why():
    hybrid = _hybrid()
    why = layout_refusal(hybrid)
    assert why == "Lfm2Model has conv layers, which a per-sequence attention mask does not govern"
    with pytest.raises(ValueError, match=r"^dpo.packing: cannot pack this model: Lfm2Model has conv layers"):
        pair_layout(hybrid, "off", packing=True)
    with pytest.raises(ValueError, match=r"^dpo.prefix_sharing: 'on' is wrong for this model: Lfm2Model has conv layers"):
        pair_layout(hybrid, "on")
    lines = []
    assert resolve_prefix_sharing(hybrid, _pairs(), 0, "auto", say=lines.append) == "off"
    assert lines == [f"prefix sharing off: {why}"]
    layout = pair_layout(hybrid, "auto")
    assert (layout.prefix_sharing, layout.attention) == (False, "concatenated")
    from alignpipe.kl import scoring_packing

    assert scoring_packing(hybrid, hybrid) == "off"  # KL scoring of samples: one row each

    # hybrids: their Mamba mixers would carry state from one packed sequence (or branch) to the next
    falcon = _tiny("falcon_h1", "sdpa", mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=4, mamba_chunk_size=8)
    assert layout_refusal(falcon) == "FalconH1Model has hybrid layers, which a per-sequence attention mask does not govern"
    jamba = _tiny("jamba", "sdpa", num_experts=2, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                  expert_layer_offset=1, mamba_d_state=4, mamba_dt_rank=4, use_mamba_kernels=False)  # fmt: skip
    assert layout_refusal(jamba) == "JambaModel has linear_attention layers, which a per-sequence attention mask does not govern"
    assert scoring_packing(jamba, jamba) == "off"
    # and where no layer_types say so, a convolution along the sequence does (Mamba and short-conv mixers have one)
    llama = _tiny("llama", "sdpa")
    llama.model.layers[0].add_module("mixer", torch.nn.Conv1d(32, 32, 4, groups=32))
    assert layout_refusal(llama) == "LlamaModel has a convolution along the sequence (layers.0.mixer), which mixes tokens across a row's sequences"

    neo = _tiny("gpt_neo", "eager", attention_types=[[["global", "local"], 1]], num_layers=2, window_size=4, max_position_embeddings=64)
    assert "local attention layers (window_size=4)" in layout_refusal(neo)
    with pytest.raises(ValueError, match="^sft.packing: cannot pack this model: GPTNeoModel has local attention layers"):
        packing_for(neo, True, "sft.packing")
