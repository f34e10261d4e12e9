"""Padding-free packing: several sequences per row give the same log-probs and the same gradients as
one padded row each, for DPO pairs (prefix-shared or not), SFT examples and KL-style scoring, with
less padding; the loop and the DPO stage report it."""
import math

import pytest
import torch

from _training_fixtures import dpo_config, synthetic_records
from alignpipe.batching import collate_examples, collate_pairs, pack_rows
from alignpipe.dpo.objective import DPOObjective, PreferenceItem
from alignpipe.dpo.scoring import pair_layout, tokenized_pair_logps
from alignpipe.logprobs import SequenceScorer, gathered_hidden
from alignpipe.models import load_causal_lm
from alignpipe.tokenization import TokenizedExample, tokenize_examples, tokenize_pairs
from alignpipe.train.loop import train

# Lengths differ a lot, so packing has padding to remove.
RECORDS = [
    {"prompt": "The movie was", "chosen": " great fun, I loved every minute of it and would see it again and again with all of my friends and family!", "rejected": " awful."},
    {"prompt": "A long prompt about a film that I saw yesterday at the", "chosen": " cinema.", "rejected": " old theatre downtown"},
    {"prompt": "Plot:", "chosen": " a heist", "rejected": " two friends drift apart over a long hot summer by the sea"},
    {"prompt": "Verdict", "chosen": " yes", "rejected": " no"},
    {"prompt": "Stars", "chosen": " five", "rejected": " one"},
    {"prompt": "In short, the acting", "chosen": " was superb", "rejected": " was wooden and the script did not help at all"},
]


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _values_and_grads(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    out = SequenceScorer(model)(batch)
    (out * torch.linspace(-1, 1, out.numel())).sum().backward()  # distinct weights: a swapped segment shows
    return out.detach(), _grads(model)


def test_pack_rows_first_fit_decreasing():
    lengths = [9, 2, 7, 3, 5, 1]
    rows = pack_rows(lengths, "to_longest")
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 9 for row in rows)
    assert rows == [[0], [2, 1], [4, 3, 5]]  # 27 tokens in 3 rows of 9: no padding left
    assert pack_rows(lengths, "one_row") == [list(range(6))]
    assert pack_rows(lengths, "off") == [[i] for i in range(6)]


@pytest.mark.parametrize("prefix_sharing", [True, False])
@pytest.mark.parametrize("packing", ["to_longest", "one_row"])
def test_packed_pairs_equal_unpacked_values_and_gradients(tiny_model_dir, smol_tokenizer, prefix_sharing, packing):
    model = load_causal_lm(tiny_model_dir).eval()
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    pad = smol_tokenizer.pad_token_id
    unpacked = collate_pairs(pairs, pad, prefix_sharing=prefix_sharing)
    packed = collate_pairs(pairs, pad, prefix_sharing=prefix_sharing, packing=packing)
    assert packed.input_ids.shape[0] < unpacked.input_ids.shape[0]
    assert packed.padding_fraction < unpacked.padding_fraction
    assert packed.real_tokens == unpacked.real_tokens
    v_unpacked, g_unpacked = _values_and_grads(model, unpacked)
    v_packed, g_packed = _values_and_grads(model, packed)
    assert torch.allclose(v_packed, v_unpacked, atol=1e-5, rtol=1e-6)
    assert torch.allclose(g_packed, g_unpacked, atol=1e-5, rtol=1e-4)


def test_packed_rows_restart_positions_per_sequence(smol_tokenizer):
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    batch = collate_pairs(pairs, smol_tokenizer.pad_token_id, prefix_sharing=False, packing="one_row")
    seq, pos = batch.sequence_ids[0], batch.position_ids[0]
    starts = [int(i) for i in torch.nonzero(torch.diff(seq, prepend=seq[:1] - 1)).flatten() if seq[i] >= 0]
    assert len(starts) == 2 * len(pairs) and all(pos[s] == 0 for s in starts)
    assert batch.padding_fraction == 0.0


def test_eager_attention_takes_the_packed_mask(tiny_model_dir, smol_tokenizer):
    eager = load_causal_lm(tiny_model_dir, attention="eager").eval()
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    pad = smol_tokenizer.pad_token_id
    with torch.no_grad():
        packed = SequenceScorer(eager)(collate_pairs(pairs, pad, prefix_sharing=True, packing="to_longest"))
        plain = SequenceScorer(eager)(collate_pairs(pairs, pad, prefix_sharing=False))
    assert torch.allclose(packed, plain, atol=1e-5)


def _sft_examples(tokenizer) -> list[TokenizedExample]:
    recs = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in RECORDS] + [{"prompt": "", "completion": "Just text."}]
    examples, _ = tokenize_examples(tokenizer, recs, max_length=64, max_prompt_length=32)
    return examples


def test_packed_sft_examples_equal_unpacked_values_and_gradients(tiny_model_dir, smol_tokenizer):
    model = load_causal_lm(tiny_model_dir).eval()
    examples = _sft_examples(smol_tokenizer)
    pad = smol_tokenizer.pad_token_id
    v_unpacked, g_unpacked = _values_and_grads(model, collate_examples(examples, pad))
    v_packed, g_packed = _values_and_grads(model, collate_examples(examples, pad, "to_longest"))
    assert torch.allclose(v_packed, v_unpacked, atol=1e-5, rtol=1e-6)
    assert torch.allclose(g_packed, g_unpacked, atol=1e-5, rtol=1e-4)


def test_packed_hidden_states_for_kl_scoring_equal_unpacked(tiny_model_dir, smol_tokenizer):
    """What sequence-level KL consumes: the hidden states predicting each completion token, in the same
    order (segment by segment) whether the examples are packed or not."""
    model = load_causal_lm(tiny_model_dir).eval()
    examples = _sft_examples(smol_tokenizer)
    pad = smol_tokenizer.pad_token_id
    with torch.no_grad():
        plain_batch, packed_batch = collate_examples(examples, pad), collate_examples(examples, pad, "to_longest")
        plain, _ = gathered_hidden(model, plain_batch)
        packed, _ = gathered_hidden(model, packed_batch)
    assert torch.equal(plain_batch.segment, packed_batch.segment) and torch.equal(plain_batch.targets, packed_batch.targets)
    assert torch.allclose(packed, plain, atol=1e-5)


def test_dpo_training_with_packing_matches_unpacked(tiny_model_dir, smol_tokenizer):
    """Reference pass and policy both packed: step-0 loss is log 2, and the run follows the unpacked one."""
    records = [{**r, "chosen": r["chosen"] * (4 if i % 4 == 0 else 1)} for i, r in enumerate(synthetic_records(16))]
    pairs, _ = tokenize_pairs(smol_tokenizer, records, max_length=64, max_prompt_length=32)
    cfg = dpo_config(epochs=1, batch_size=8, micro_batch_size=8)
    histories = {}
    for packing in (False, True):
        model = load_causal_lm(tiny_model_dir)
        chosen, rejected = tokenized_pair_logps(model, pairs, smol_tokenizer.pad_token_id, batch_size=8, prefix_sharing="on", packing=packing)
        items = [PreferenceItem(p, float(c), float(r)) for p, c, r in zip(pairs, chosen, rejected)]
        layout = pair_layout(model, "on", packing)
        assert layout.packing == ("to_longest" if packing else "off") and layout.attention == "dense"
        histories[packing] = train(model, items, DPOObjective(cfg, layout.collator(smol_tokenizer.pad_token_id)), cfg).history
    assert histories[True][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for unpacked, packed in zip(histories[False], histories[True]):
        assert packed["loss"] == pytest.approx(unpacked["loss"], abs=1e-5)
        assert packed["padding_fraction"] < unpacked["padding_fraction"]


def test_stages_honour_packing_and_report_the_layout(tmp_path, tiny_model_dir):
    """The real SFT, reference and DPO stages with sft.packing and dpo.packing: packed all the way,
    step-0 DPO loss log 2 (reference and policy in the same layout), the layout in the metrics."""
    import io
    import json

    from rich.console import Console

    from alignpipe.pipeline import ConsoleReporter, run_pipeline
    from pipeline_config import load_config
    from tiny_pipeline import tiny_pipeline_config

    path = tiny_pipeline_config(tmp_path, tiny_model_dir, sft={"packing": True}, dpo={"packing": True, "epochs": 1})
    result = run_pipeline(load_config(None, path), ["dpo"], reporter=ConsoleReporter(Console(file=io.StringIO())))
    sft, dpo = result.outcome("sft").metrics, result.outcome("dpo").metrics
    assert sft["packing"] == 1.0 and 0 <= sft["padding_fraction"] < 1
    assert (dpo["packing"], dpo["prefix_sharing"], dpo["attention_dense"], dpo["attention_flex"]) == (1.0, 1.0, 1.0, 0.0)
    assert 0 <= dpo["padding_fraction"] < 1
    history = [json.loads(line) for line in (result.outcome("dpo").out_dir / "history.jsonl").read_text().splitlines()]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
