"""The shared training loop: learning, bit-exact resume, LoRA, SFT objective."""
import math

import pytest
import torch

from _training_fixtures import dpo_config, objective, preference_items
from alignpipe.models import load_causal_lm
from alignpipe.train.checkpoint import latest_checkpoint
from alignpipe.train.loop import train


class Killed(Exception):
    pass


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_dpo_learns_the_preference(tiny_model_dir, smol_tokenizer):
    model = load_causal_lm(tiny_model_dir)
    items = preference_items(model, smol_tokenizer)
    cfg = dpo_config(epochs=3)
    result = train(model, items, objective(model, smol_tokenizer, cfg), cfg)
    first, last = result.history[0], result.final
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    assert last["loss"] < 0.5 and last["rewards/accuracies"] > 0.8 and last["rewards/margins"] > 0
    for key in ("grad_norm", "lr", "tokens_per_s", "padding_fraction", "peak_memory_mb", "logps/chosen"):
        assert key in last


def test_killed_and_resumed_run_ends_bitwise_equal(tiny_model_dir, smol_tokenizer, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        cfg = dpo_config(epochs=2, checkpoint_every=3, lora=None)  # 8 steps, dropout-free model
        reference = load_causal_lm(tiny_model_dir)
        items = preference_items(reference, smol_tokenizer)
        train(reference, items, objective(reference, smol_tokenizer, cfg), cfg)

        ckpt_dir = tmp_path / "ckpt"
        model = load_causal_lm(tiny_model_dir)

        def kill_at_5(step, metrics):  # mid-epoch 2, two steps after the checkpoint at step 3
            if step == 5:
                raise Killed

        with pytest.raises(Killed):
            train(model, items, objective(model, smol_tokenizer, cfg), cfg, checkpoint_dir=ckpt_dir, callbacks=[kill_at_5])
        assert latest_checkpoint(ckpt_dir).name == "step-00000003"

        fresh = load_causal_lm(tiny_model_dir)  # a new process would start from scratch weights
        resumed = train(fresh, items, objective(fresh, smol_tokenizer, cfg), cfg, checkpoint_dir=ckpt_dir)
        assert resumed.resumed_from == 3 and len(resumed.history) == 8
        want, got = _weights(reference), _weights(fresh)
        assert all(torch.equal(want[n], got[n]) for n in want)
    finally:
        torch.use_deterministic_algorithms(False)


def test_resume_restores_dropout_rng(tiny_model_dir, smol_tokenizer, tmp_path):
    """Training turns model dropout off, but LoRA's dropout stays as configured: its masks come from
    the RNG, so a resumed run only matches an uninterrupted one if the RNG state is restored."""
    from alignpipe.stages.common import apply_lora
    from pipeline_config.schema import LoraConfig

    lora = LoraConfig(r=4, dropout=0.3, target_modules=["q_proj", "v_proj"])

    def load():
        torch.manual_seed(0)  # the same LoRA init in every run
        return apply_lora(load_causal_lm(tiny_model_dir), lora)

    cfg = dpo_config(epochs=1, checkpoint_every=2, lr=5e-3, lora=lora.model_dump())
    a = load()
    items = preference_items(a, smol_tokenizer)
    train(a, items, objective(a, smol_tokenizer, cfg), cfg)
    b = load()

    def kill_at_3(step, metrics):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(b, items, objective(b, smol_tokenizer, cfg), cfg, checkpoint_dir=tmp_path, callbacks=[kill_at_3])
    c = load()
    train(c, items, objective(c, smol_tokenizer, cfg), cfg, checkpoint_dir=tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_lora_trains_only_adapters_and_reference_can_be_the_disabled_adapter(tiny_model_dir, smol_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(tiny_model_dir)
    items = preference_items(base, smol_tokenizer)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    cfg = dpo_config(epochs=2, lr=5e-3, lora={"r": 4}, reference="adapter_disabled")
    result = train(model, items, objective(model, smol_tokenizer, cfg), cfg)
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result.final["rewards/margins"] > 0
    for n, p in model.get_base_model().named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, before[n.replace("base_layer.", "")])


def test_batch_size_errors_are_clear(tiny_model_dir, smol_tokenizer):
    model = load_causal_lm(tiny_model_dir)
    items = preference_items(model, smol_tokenizer, n=4)
    cfg = dpo_config()
    with pytest.raises(ValueError, match="4 training items are fewer than batch_size 8"):
        train(model, items, objective(model, smol_tokenizer, cfg), cfg)


def test_sft_objective_counts_eos_and_lowers_nll(tiny_model_dir, smol_tokenizer):
    from alignpipe.sft import SFTObjective, evaluate_nll
    from alignpipe.tokenization import tokenize_examples
    from pipeline_config.schema import SFTConfig

    model = load_causal_lm(tiny_model_dir)
    recs = [{"prompt": "", "completion": f"A fine film number {i}, truly."} for i in range(16)]
    examples, _ = tokenize_examples(smol_tokenizer, recs, max_length=32, max_prompt_length=8)
    assert all(e.completion[-1] == smol_tokenizer.eos_token_id for e in examples)
    before = evaluate_nll(model, examples, smol_tokenizer.pad_token_id)
    cfg = SFTConfig(lr=3e-3, batch_size=8, micro_batch_size=4, epochs=4, max_length=32, max_prompt_length=8)
    result = train(model, examples, SFTObjective(smol_tokenizer.pad_token_id), cfg)
    after = evaluate_nll(model, examples, smol_tokenizer.pad_token_id)
    assert after["eval_loss"] < before["eval_loss"] - 0.5
    assert result.history[0]["loss"] == pytest.approx(before["eval_loss"], rel=1e-3)
