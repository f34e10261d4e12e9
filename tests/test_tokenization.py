"""The data contract: boundaries, BOS/EOS, chat templates, truncation and bad records."""
import pytest

from alignpipe.tokenization import tokenize_examples, tokenize_pairs, uses_bos


def _pairs(tok, recs, **kw):
    kw.setdefault("max_length", 64)
    kw.setdefault("max_prompt_length", 32)
    return tokenize_pairs(tok, recs, **kw)


def test_plain_pair_shares_prompt_and_ends_with_eos(smol_tokenizer):
    tok = smol_tokenizer
    (p,), stats = _pairs(tok, [{"prompt": "The movie was", "chosen": " great fun!", "rejected": " awful."}])
    assert tok.decode(p.prompt) == "The movie was"
    assert tok.decode(p.chosen[:-1]) == " great fun!" and p.chosen[-1] == tok.eos_token_id
    assert tok.decode(p.rejected[:-1]) == " awful." and p.rejected[-1] == tok.eos_token_id
    assert stats.kept == 1 and stats.truncated == 0


def test_eos_counted_even_when_pad_equals_eos(smol_tokenizer):
    assert smol_tokenizer.pad_token_id == smol_tokenizer.eos_token_id
    (p,), _ = _pairs(smol_tokenizer, [{"prompt": "Hi", "chosen": " a", "rejected": " b"}])
    assert p.chosen.count(smol_tokenizer.eos_token_id) == 1


def test_chat_pair_renders_template_with_one_eos(smol_tokenizer):
    tok = smol_tokenizer
    msgs = [{"role": "user", "content": "Hi there"}]
    (p,), _ = _pairs(tok, [{"prompt": msgs, "chosen": "Hello!", "rejected": "Go away."}], max_length=128, max_prompt_length=96)
    assert tok.decode(p.prompt).endswith("<|im_start|>assistant\n")
    assert tok.decode(p.chosen) == "Hello!<|im_end|>"
    assert p.rejected.count(tok.eos_token_id) == 1


def test_exactly_one_bos_when_model_uses_one(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_tokenizer_dir), add_bos_token=True)
    bos = tok.bos_token_id
    assert uses_bos(tok)
    chat = [{"role": "user", "content": "hi"}]
    for prompt in ("Hello", tok.bos_token + "Hello", chat):  # plain, text already holding BOS, chat template
        (p,), _ = _pairs(tok, [{"prompt": prompt, "chosen": " a", "rejected": " b"}], max_length=96, max_prompt_length=64)
        assert p.prompt[0] == bos and p.prompt[1] != bos  # no doubled BOS
        if not isinstance(prompt, list):  # (SmolLM2's BOS also opens every chat turn)
            assert p.prompt.count(bos) == 1


def test_no_bos_when_model_does_not_use_one(smol_tokenizer):
    assert not uses_bos(smol_tokenizer)
    (p,), _ = _pairs(smol_tokenizer, [{"prompt": "x y", "chosen": " a", "rejected": " b"}])
    assert smol_tokenizer.bos_token_id not in p.prompt


def test_prompt_truncation_keeps_the_end_and_counts(smol_tokenizer):
    tok = smol_tokenizer
    long_prompt = " ".join(f"word{i}" for i in range(50)) + " END"
    (p,), stats = _pairs(tok, [{"prompt": long_prompt, "chosen": " yes", "rejected": " no"}], max_prompt_length=8)
    assert len(p.prompt) == 8 and tok.decode(p.prompt).endswith(" END")
    assert stats.truncated == 1


def test_completion_truncation_and_drop_are_counted(smol_tokenizer):
    same_start = " " + " ".join(["same"] * 40)
    recs = [
        {"prompt": "P", "chosen": same_start + " good", "rejected": same_start + " bad"},  # identical after the cut
        {"prompt": "P", "chosen": " short", "rejected": " " + "long " * 40},
    ]
    pairs, stats = _pairs(smol_tokenizer, recs, max_length=16, max_prompt_length=4)
    assert stats.dropped == 1 and stats.dropped_indices == [0]
    assert stats.truncated == 1 and len(pairs) == 1
    assert len(pairs[0].prompt) + len(pairs[0].rejected) == 16


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "record 0: 'prompt' is empty"),
        ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "record 0: 'chosen' is empty"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "record 0: 'chosen' and 'rejected' are identical"),
        ({"prompt": "p", "chosen": "a"}, "record 0: missing field 'rejected'"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "record 0: 'chosen' must be a string"),
    ],
)
def test_bad_records_name_the_index(smol_tokenizer, record, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _pairs(smol_tokenizer, [record])


def test_bad_record_index_is_reported(smol_tokenizer):
    good = {"prompt": "p", "chosen": " a", "rejected": " b"}
    with pytest.raises(ValueError, match="record 2:"):
        _pairs(smol_tokenizer, [good, good, {"prompt": "p", "chosen": " a", "rejected": " a"}])


def test_sft_examples_allow_empty_prompt(smol_tokenizer):
    tok = smol_tokenizer
    (e,), stats = tokenize_examples(tok, [{"prompt": "", "completion": "A fine film."}], max_length=32, max_prompt_length=8)
    assert tok.decode(e.prompt + e.completion) == "A fine film.<|im_end|>"
    assert e.completion[-1] == tok.eos_token_id and len(e.prompt) == 1
