"""Attention paths: the layout rule by hand, its FlexAttention block mask against the dense mask, a
FlexAttention model's forward against separate forwards (CPU has no flex backward: gradients are
checked in bench/gpu_check.py), and attentions that cannot take a layout say so in one line."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from alignpipe.attention import attention_implementation, check_trainable, dense_mask, flex_block_mask, flex_trains_on, model_attention_mask
from alignpipe.batching import collate_examples, collate_pairs
from alignpipe.dpo.scoring import pair_layout, resolve_prefix_sharing
from alignpipe.logprobs import SequenceScorer
from alignpipe.models import load_causal_lm, use_attention
from alignpipe.tokenization import TokenizedExample, TokenizedPair, tokenize_examples, tokenize_pairs

RECORDS = [
    {"prompt": "The movie was", "chosen": " great fun, I loved every minute of it!", "rejected": " awful."},
    {"prompt": "A long prompt about a film that I saw yesterday at the", "chosen": " cinema.", "rejected": " old theatre downtown with friends"},
    {"prompt": "Plot:", "chosen": " a heist goes wrong", "rejected": " two friends drift apart over a summer"},
]


def test_the_layout_rule_by_hand():
    """Two prefix-shared pairs in one row: A = prompt 2, chosen 2, rejected 2; B = 1, 1, 1."""
    a, b = TokenizedPair([10, 11], [12, 13], [14, 15]), TokenizedPair([20], [21], [22])
    batch = collate_pairs([a, b], pad_id=0, prefix_sharing=True, packing="one_row")
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0, 0],  # A chosen
            [1, 1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0, 0, 0],  # A rejected: A's prompt and itself, not A's chosen
            [1, 1, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 1, 0, 0],  # B prompt: nothing of A
            [0, 0, 0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(dense_mask(batch)[0, 0], expected)
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 2, 3, 0, 1, 1]
    # chosen A, chosen B, rejected A, rejected B: each predicted from the right position
    assert batch.gather_index.tolist() == [1, 2, 1, 4, 6, 6]
    assert batch.targets.tolist() == [12, 13, 14, 15, 21, 22]
    assert batch.segment.tolist() == [0, 0, 2, 2, 1, 3]


def test_flex_block_mask_equals_the_dense_mask_over_several_blocks():
    """Rows wider than one 128-token block, some blocks fully masked: flex attention with the block
    mask computes what sdpa computes with the dense mask (uncompiled flex: the reference kernel)."""
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(1, 1000, (n,), generator=gen).tolist()  # noqa: E731
    pairs = [TokenizedPair(ids(100), ids(60), ids(50)), TokenizedPair(ids(30), ids(20), ids(40)), TokenizedPair(ids(5), ids(3), ids(2))]
    batch = collate_pairs(pairs, pad_id=0, prefix_sharing=True, packing="to_longest")
    assert batch.input_ids.shape == (2, 210)
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = (torch.randn(2, 2, 210, 16, generator=gen) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = flex_attention(q, k, v, block_mask=flex_block_mask(batch))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(batch))
    real = batch.sequence_ids >= 0  # padding rows attend differently (earlier padding vs nothing): not compared
    assert torch.allclose(flex.transpose(1, 2)[real], dense.transpose(1, 2)[real], atol=1e-5)


def _naive_logps(model, prompt, completion):
    logits = model(torch.tensor([prompt + completion])).logits.float().log_softmax(-1)[0]
    return sum(logits[len(prompt) - 1 + j, tok] for j, tok in enumerate(completion))


def test_flex_forward_equals_separate_forwards(tiny_model_dir, smol_tokenizer):
    """The flex path as training takes it (prefix sharing, every pair packed into one row), scored by a
    model loaded with attention 'flex_attention', against one plain forward per completion."""
    flex = load_causal_lm(tiny_model_dir, attention="flex_attention").eval()
    sdpa = load_causal_lm(tiny_model_dir).eval()
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    layout = pair_layout(flex, "on", packing=True)
    assert (layout.prefix_sharing, layout.packing, layout.attention) == (True, "one_row", "flex")
    batch = layout.collator(smol_tokenizer.pad_token_id)(pairs)
    assert batch.input_ids.shape[0] == 1 and batch.padding_fraction == 0.0
    with torch.no_grad():
        got = SequenceScorer(flex)(batch)
        naive = torch.stack(
            [_naive_logps(sdpa, p.prompt, p.chosen) for p in pairs] + [_naive_logps(sdpa, p.prompt, p.rejected) for p in pairs]
        )
    assert torch.allclose(got, naive, atol=1e-4)


def test_flex_scores_several_batch_shapes_on_cpu(tiny_model_dir, smol_tokenizer):
    """The reference pass over real data meets many batch shapes. Compiled flex recompiles for the
    second shape with dynamic shapes, which fails on CPU in torch 2.13 (InductorError); scoring runs
    it uncompiled there (alignpipe.attention.forward_context): same values as sdpa for every shape."""
    from alignpipe.train.precision import reference_pair_logps

    flex = load_causal_lm(tiny_model_dir, attention="flex_attention").eval()
    sdpa = load_causal_lm(tiny_model_dir).eval()
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    pad = smol_tokenizer.pad_token_id
    shapes = set()
    for batch_size, packing in [(1, False), (2, True)]:
        shapes |= {tuple(collate_pairs(pairs[i : i + batch_size], pad, prefix_sharing=True, packing="one_row" if packing else "off").input_ids.shape)
                   for i in range(0, len(pairs), batch_size)}  # fmt: skip
        got = reference_pair_logps(flex, pairs, pad, batch_size=batch_size, prefix_sharing="on", packing=packing)
        want = reference_pair_logps(sdpa, pairs, pad, batch_size=batch_size, prefix_sharing="on", packing=packing)
        assert all(torch.allclose(g, w, atol=1e-4) for g, w in zip(got, want))
    assert len(shapes) >= 4


def test_flex_cannot_train_on_cpu_and_says_so(tiny_model_dir):
    """torch 2.13 has no FlexAttention backward on CPU: training with it fails before step 1, in one line."""
    assert flex_trains_on("cpu") is False
    flex = load_causal_lm(tiny_model_dir, attention="flex_attention")
    with pytest.raises(ValueError, match=r"^model.attention 'flex_attention' cannot train on cpu: .* no FlexAttention backward") as err:
        check_trainable(flex)
    assert "\n" not in str(err.value)
    check_trainable(load_causal_lm(tiny_model_dir))  # sdpa trains anywhere


def test_use_attention_switches_a_loaded_model(tiny_model_dir, smol_tokenizer):
    model = load_causal_lm(tiny_model_dir).eval()
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    batch = collate_pairs(pairs, smol_tokenizer.pad_token_id, prefix_sharing=True)
    with torch.no_grad():
        before = SequenceScorer(model)(batch)
        assert attention_implementation(use_attention(model, "eager")) == "eager"
        assert model_attention_mask(model, batch, torch.float32).dtype == torch.float32  # additive, for eager
        after = SequenceScorer(model)(batch)
    assert torch.allclose(before, after, atol=1e-5)


@pytest.fixture(scope="module")
def causal_only_attention():
    """A real attention implementation that takes no custom mask (as FlashAttention-2 in transformers):
    sdpa with is_causal, registered under its own name."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def causal_only(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    AttentionInterface.register("causal_only", causal_only)
    return "causal_only"


def test_an_attention_without_layout_masks_says_so(tiny_model_dir, smol_tokenizer, causal_only_attention):
    model = load_causal_lm(tiny_model_dir, attention=causal_only_attention).eval()
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    pad = smol_tokenizer.pad_token_id
    layout = pair_layout(model, "auto")
    assert (layout.prefix_sharing, layout.packing, layout.attention) == (False, "off", "concatenated")
    lines = []
    assert resolve_prefix_sharing(model, pairs, pad, "auto", say=lines.append) == "off"
    assert lines == ["prefix sharing off: attention 'causal_only' cannot take its mask (needs sdpa, eager, flex_attention)"]
    with pytest.raises(ValueError, match=r"^dpo.prefix_sharing: 'on' needs attention sdpa, eager, flex_attention; this model uses 'causal_only'"):
        pair_layout(model, "on")
    with pytest.raises(ValueError, match=r"^dpo.packing: needs attention sdpa, eager, flex_attention; this model uses 'causal_only'$"):
        pair_layout(model, "off", packing=True)
    with pytest.raises(ValueError, match="cannot take a prefix-shared or packed batch"):
        SequenceScorer(model)(collate_pairs(pairs, pad, prefix_sharing=True))
    with torch.no_grad():  # the concatenated fallback scores what sdpa scores
        got = SequenceScorer(model)(layout.collator(pad)(pairs))
        want = SequenceScorer(load_causal_lm(tiny_model_dir).eval())(collate_pairs(pairs, pad, prefix_sharing=True))
    assert torch.allclose(got, want, atol=1e-5)
