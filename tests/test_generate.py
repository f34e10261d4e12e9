"""Batched generation on a tiny random Llama with SmolLM2's tokenizer (pad == eos)."""
from __future__ import annotations

import copy

import pytest
import torch

from alignpipe.batching import length_sorted_batches
from alignpipe.generate import batch_seed, generate

PROMPTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog and keeps running",
    "a",
    # A real EOS token inside the prompt: a mask built from token ids (pad == eos) would hide it.
    "first line<|im_end|>\nsecond line",
    "once upon a time there was",
    "SUBREDDIT: r/test\n\nTITLE: a title\n\nPOST: some post\n\nTL;DR:",
    "x y",
]


def _greedy_alone(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """Plain HF greedy decoding of one prompt, no padding: the reference for batched decoding."""
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_batched_greedy_matches_one_prompt_at_a_time(tiny_model, smol_tokenizer):
    result = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=6, temperature=0, batch_size=3)
    for prompt, text, count in zip(PROMPTS, result.texts, result.num_new_tokens):
        expected = _greedy_alone(tiny_model, smol_tokenizer, prompt, 6)
        assert text == smol_tokenizer.decode(expected, skip_special_tokens=True), prompt
        assert count == len(expected)


def test_order_is_restored_whatever_the_batching(tiny_model, smol_tokenizer):
    one_batch = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=5, temperature=0, batch_size=len(PROMPTS))
    pairs = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=5, temperature=0, batch_size=2)
    reversed_in = generate(tiny_model, smol_tokenizer, PROMPTS[::-1], max_new_tokens=5, temperature=0, batch_size=2)
    assert len(set(one_batch.texts)) > 3  # the prompts really get different continuations
    assert pairs.texts == one_batch.texts
    assert reversed_in.texts == one_batch.texts[::-1]


def test_sampling_is_reproducible_and_seed_dependent(tiny_model, smol_tokenizer):
    kwargs = dict(max_new_tokens=8, temperature=1.0, top_p=0.95, batch_size=3)
    torch.manual_seed(1)
    first = generate(tiny_model, smol_tokenizer, PROMPTS, seed=7, **kwargs)
    torch.manual_seed(2)  # the global RNG must not matter
    again = generate(tiny_model, smol_tokenizer, PROMPTS, seed=7, **kwargs)
    other = generate(tiny_model, smol_tokenizer, PROMPTS, seed=8, **kwargs)
    assert first.texts == again.texts
    assert first.texts != other.texts


def test_caller_rng_state_is_untouched(tiny_model, smol_tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(tiny_model, smol_tokenizer, PROMPTS[:3], max_new_tokens=4, temperature=1.0, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_max_new_tokens_is_respected(tiny_model, smol_tokenizer):
    capped = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=7, temperature=1.0, seed=0)
    assert all(1 <= n <= 7 for n in capped.num_new_tokens)
    full = generate(tiny_model, smol_tokenizer, PROMPTS, max_new_tokens=7, temperature=1.0, seed=0, stop_at_eos=False)
    assert full.num_new_tokens == [7] * len(PROMPTS)
    assert full.tokens_per_s > 0 and full.seconds > 0
    assert full.tokens_per_s == pytest.approx(sum(full.num_new_tokens) / full.seconds)


def test_stops_at_eos_per_row(tiny_model, smol_tokenizer):
    """Declare as EOS the token greedy decoding of one prompt emits third: that row must stop there,
    with the EOS counted but not decoded, while rows that never emit it run to max_new_tokens."""
    stopping_prompt = PROMPTS[4]
    free_run = _greedy_alone(tiny_model, smol_tokenizer, stopping_prompt, 8)
    stop_token = free_run[2]
    first_stop = free_run.index(stop_token)
    model = tiny_model
    model.generation_config = copy.deepcopy(model.generation_config)
    model.generation_config.eos_token_id = [smol_tokenizer.eos_token_id, stop_token]

    result = generate(model, smol_tokenizer, PROMPTS, max_new_tokens=8, temperature=0, batch_size=4)
    i = PROMPTS.index(stopping_prompt)
    assert result.num_new_tokens[i] == first_stop + 1
    assert result.texts[i] == smol_tokenizer.decode(free_run[:first_stop], skip_special_tokens=True)
    for j, prompt in enumerate(PROMPTS):
        alone = _greedy_alone(model, smol_tokenizer, prompt, 8)
        if stop_token not in alone:
            assert result.num_new_tokens[j] == 8


def test_result_keeps_the_exact_prompt_and_sampled_ids(tiny_model, smol_tokenizer):
    """What KL scoring needs: the ids the model was conditioned on and the ids it drew, the stopping
    EOS included, and whether the sample stopped or was cut at max_new_tokens."""
    model = tiny_model
    free_run = _greedy_alone(model, smol_tokenizer, PROMPTS[4], 8)
    model.generation_config = copy.deepcopy(model.generation_config)
    model.generation_config.eos_token_id = [smol_tokenizer.eos_token_id, free_run[2]]  # one row stops early
    result = generate(model, smol_tokenizer, PROMPTS, max_new_tokens=8, temperature=0, batch_size=3)
    stops = [smol_tokenizer.eos_token_id, free_run[2]]
    for i, prompt in enumerate(PROMPTS):
        assert result.prompt_ids[i] == smol_tokenizer(prompt).input_ids  # unpadded, as tokenized
        ids = result.token_ids[i]
        assert ids == _greedy_alone(model, smol_tokenizer, prompt, 8)[: len(ids)]
        assert len(ids) == result.num_new_tokens[i]
        assert result.finished[i] == (ids[-1] in stops) and (result.finished[i] or len(ids) == 8)
        assert result.texts[i] == smol_tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True)
    i = PROMPTS.index(PROMPTS[4])
    assert result.finished[i] and result.token_ids[i][-1] == free_run[2]
    assert not all(result.finished)  # some rows ran to max_new_tokens without an EOS


def test_empty_prompt_list_and_bad_arguments(tiny_model, smol_tokenizer):
    empty = generate(tiny_model, smol_tokenizer, [], max_new_tokens=4, temperature=0)
    assert empty.texts == [] and empty.num_new_tokens == [] and empty.token_ids == [] and empty.prompt_ids == []
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny_model, smol_tokenizer, ["a"], max_new_tokens=4, temperature=-1)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(tiny_model, smol_tokenizer, ["a", ""], max_new_tokens=4, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny_model, smol_tokenizer, ["a"], max_new_tokens=4, temperature=1, top_p=0)


def test_tokenizer_padding_side_is_restored(tiny_model, smol_tokenizer):
    smol_tokenizer.padding_side = "right"
    generate(tiny_model, smol_tokenizer, PROMPTS[:2], max_new_tokens=2, temperature=0)
    assert smol_tokenizer.padding_side == "right"


def test_length_sorted_batches_cover_every_index_once():
    lengths = [3, 9, 1, 9, 5, 2, 7]
    batches = length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [lengths[i] for i in batches[0]] == [9, 9, 7]


def test_batch_seed_depends_on_seed_and_index_only():
    assert batch_seed(0, 0) == batch_seed(0, 0)
    assert len({batch_seed(s, i) for s in range(3) for i in range(3)}) == 9
    assert 0 <= batch_seed(2**40, 10**6) < 2**63


def test_generation_benchmark_arms_are_comparable(tiny_model, smol_tokenizer):
    from bench.generation import benchmark_prompts, compare

    prompts = benchmark_prompts(4)
    assert len(set(prompts)) == 4 and len({len(p.split()) for p in prompts}) > 1
    result = compare(tiny_model, smol_tokenizer, prompts, max_new_tokens=4, batch_size=2)
    assert result["batched"]["tokens"] == result["one_at_a_time"]["tokens"] == 16
    assert result["identical_greedy_texts"] == 4
    assert result["speedup"] > 0
