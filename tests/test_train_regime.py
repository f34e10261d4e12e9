"""What training runs under: no dropout, the reference's numeric regime, and this process's device.

Each is checked where it matters: at step 0 of the real DPO objective and loop the policy must
equal the reference, so the loss is log 2 and both implicit rewards are 0.
"""
import math

import pytest
import torch

from _training_fixtures import build_tiny_with_dropout, dpo_config, objective, preference_items
from alignpipe.models import load_causal_lm
from alignpipe.train.dropout import dropout_disabled
from alignpipe.train.loop import train

LOG2 = math.log(2)


@pytest.fixture(scope="module", params=["gpt2", "gpt_neox", "llama"])
def dropout_model_dir(request, tmp_path_factory, smol_tokenizer):
    return build_tiny_with_dropout(request.param, tmp_path_factory.mktemp(request.param), smol_tokenizer, p=0.1)


def _train_forward(model, ids):
    model.train()
    return model(input_ids=ids).logits


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


def test_dropout_disabled_makes_train_mode_equal_eval_mode_and_restores(dropout_model_dir):
    model = load_causal_lm(dropout_model_dir)
    ids = torch.randint(0, 1000, (2, 12))
    config = model.config.to_dict()
    for attn in ("eager", "sdpa"):  # both read the attention dropout from the module
        model.config._attn_implementation = attn
        with torch.no_grad():
            want = model.eval()(input_ids=ids).logits
            assert not torch.equal(_train_forward(model, ids), want)  # the model really has dropout
            with dropout_disabled(model):
                assert torch.equal(_train_forward(model, ids), want)
            assert not torch.equal(_train_forward(model, ids), want)  # and has it again afterwards
    assert model.config.to_dict() == config  # a published model keeps its dropout settings


def test_lora_dropout_stays_as_configured(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_causal_lm(tiny_model_dir), LoraConfig(r=4, lora_dropout=0.3, target_modules=["q_proj"]))
    lora = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert lora and all(m.p == 0.3 for m in lora)
    with dropout_disabled(model) as lora_rate:
        assert all(m.p == 0.3 for m in lora) and lora_rate == 0.3


def test_training_says_that_lora_dropout_stays_on(tiny_model_dir, smol_tokenizer):
    """lora.dropout > 0 is kept (an explicit setting) and the loop says so in one line (none: 0.0, nothing said)."""
    from peft import LoraConfig, get_peft_model

    from alignpipe.train.loop import train

    base = load_causal_lm(tiny_model_dir)
    with dropout_disabled(base) as lora_rate:
        assert lora_rate == 0.0
    items = preference_items(base, smol_tokenizer, n=8)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.3, target_modules=["q_proj"]))
    cfg = dpo_config(max_steps=1, batch_size=8, micro_batch_size=8)
    lines = []
    train(model, items, objective(model, smol_tokenizer, cfg), cfg, say=lines.append)
    assert lines == ["LoRA dropout 0.3 stays on while training (lora.dropout); every other dropout is off"]


def test_step0_dpo_loss_is_log2_with_a_dropout_model(dropout_model_dir, smol_tokenizer):
    """Reference log-probs in eval mode, policy in train mode: equal only if training has no dropout."""
    model = load_causal_lm(dropout_model_dir)
    items = preference_items(model, smol_tokenizer)
    cfg = dpo_config(max_steps=1)
    first = train(model, items, objective(model, smol_tokenizer, cfg), cfg).history[0]
    assert first["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-7)


def test_step0_with_adapter_disabled_reference_is_log2_with_a_dropout_model(tmp_path, smol_tokenizer):
    """The reference is the same module with LoRA switched off: dropout must be off for it too."""
    from alignpipe.stages.common import apply_lora
    from pipeline_config.schema import LoraConfig

    model_dir = build_tiny_with_dropout("gpt2", tmp_path / "gpt2", smol_tokenizer, p=0.1)
    cfg = dpo_config(max_steps=1, lora={"r": 4, "dropout": 0.1, "target_modules": ["c_attn"]}, reference="adapter_disabled")
    model = apply_lora(load_causal_lm(model_dir), LoraConfig(r=4, dropout=0.1, target_modules=["c_attn"]))
    items = preference_items(model, smol_tokenizer)  # precomputed values unused by this reference
    first = train(model, items, objective(model, smol_tokenizer, cfg), cfg).history[0]
    assert first["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-7)


def test_sft_first_step_loss_equals_eval_nll_with_a_dropout_model(tmp_path, smol_tokenizer):
    from alignpipe.sft import SFTObjective, evaluate_nll
    from alignpipe.tokenization import tokenize_examples
    from pipeline_config.schema import SFTConfig

    model = load_causal_lm(build_tiny_with_dropout("gpt2", tmp_path / "gpt2", smol_tokenizer, p=0.1))
    recs = [{"prompt": "", "completion": f"A fine film number {i}, truly."} for i in range(8)]
    examples, _ = tokenize_examples(smol_tokenizer, recs, max_length=32, max_prompt_length=8)
    before = evaluate_nll(model, examples, smol_tokenizer.pad_token_id)
    cfg = SFTConfig(lr=1e-3, batch_size=8, micro_batch_size=4, max_steps=1, max_length=32, max_prompt_length=8)
    result = train(model, examples, SFTObjective(smol_tokenizer.pad_token_id), cfg)
    assert result.history[0]["loss"] == pytest.approx(before["eval_loss"], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Precision: the reference is scored in the regime the policy trains in
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cpu_bf16_autocast(monkeypatch):
    """The CUDA regime (fp32 weights, bf16 autocast), on the CPU: for the loop and the reference alike."""
    import alignpipe.train.precision as precision

    monkeypatch.setitem(precision.AUTO_AUTOCAST, "cpu", torch.bfloat16)


def test_step0_is_log2_under_bf16_autocast(cpu_bf16_autocast, tiny_model_dir, smol_tokenizer):
    from dataclasses import replace

    from alignpipe.dpo.scoring import tokenized_pair_logps

    model = load_causal_lm(tiny_model_dir)
    items = preference_items(model, smol_tokenizer)  # alignpipe.train.precision.reference_pair_logps
    cfg = dpo_config(max_steps=1)
    first = train(model, items, objective(model, smol_tokenizer, cfg), cfg).history[0]
    assert first["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-7)

    # The same step against a reference scored in plain fp32 (outside the training regime) is off.
    model = load_causal_lm(tiny_model_dir)
    chosen, rejected = tokenized_pair_logps(model, [it.pair for it in items], smol_tokenizer.pad_token_id, batch_size=8)
    fp32_items = [replace(it, ref_chosen=float(c), ref_rejected=float(r)) for it, c, r in zip(items, chosen, rejected)]
    off = train(model, fp32_items, objective(model, smol_tokenizer, cfg), cfg).history[0]
    assert abs(off["rewards/chosen"]) > 1e-5 and abs(off["loss"] - LOG2) > 1e-6


def test_backward_runs_outside_autocast(cpu_bf16_autocast, tiny_model_dir, smol_tokenizer):
    """On CPU backward runs on the calling thread, so Python code in it (hooks, custom Functions)
    would see autocast if backward were called inside the block. The loss's own hook checks."""
    model = load_causal_lm(tiny_model_dir)
    items = preference_items(model, smol_tokenizer)
    cfg = dpo_config(max_steps=1)
    dpo = objective(model, smol_tokenizer, cfg)
    seen = {"forward": [], "backward": []}

    def observed(scorer, batch, chunk):
        loss, metrics = dpo(scorer, batch, chunk)
        seen["forward"].append(torch.is_autocast_enabled("cpu"))
        loss.register_hook(lambda g: seen["backward"].append(torch.is_autocast_enabled("cpu")))
        return loss, metrics

    observed.units, observed.collate = dpo.units, dpo.collate
    train(model, items, observed, cfg)
    assert seen == {"forward": [True, True], "backward": [False, False]}


def test_launch_precision_other_than_the_loops_is_refused(monkeypatch):
    from alignpipe.train.precision import check_launch_precision

    for ok in ("no", None):
        if ok is None:
            monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
        else:
            monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", ok)
        check_launch_precision("cpu")
        check_launch_precision("cuda")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    check_launch_precision("cuda")
    with pytest.raises(ValueError, match="mixed_precision 'bf16' is not supported.*on cpu"):
        check_launch_precision("cpu")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValueError, match="mixed_precision 'fp16'"):
        check_launch_precision("cuda")


def test_reference_needs_fp32_weights(tiny_model_dir, smol_tokenizer):
    from alignpipe.train.precision import reference_pair_logps

    model = load_causal_lm(tiny_model_dir, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 weights"):
        reference_pair_logps(model, [], smol_tokenizer.pad_token_id, batch_size=8)


# ---------------------------------------------------------------------------------------------
# Device: each process on its own GPU
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def two_gpus(monkeypatch):
    """What torch reports on a 2-GPU machine; set_device is recorded instead of touching a GPU."""
    bound = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    return bound


@pytest.mark.parametrize("rank", [0, 1])
def test_each_launched_process_binds_its_local_rank_gpu(two_gpus, monkeypatch, rank):
    from alignpipe.models import bind_process_device, default_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    assert bind_process_device() == torch.device("cuda", rank)
    assert two_gpus == [rank]  # the current device, so later .to("cuda") and accelerate agree
    assert default_device() == torch.device("cuda", rank)


def test_a_single_process_uses_gpu0_and_a_rank_without_a_gpu_fails(two_gpus, monkeypatch):
    from alignpipe.models import bind_process_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert bind_process_device() == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK 2: this process sees only 2 CUDA devices"):
        bind_process_device()


def test_cpu_machine_and_use_cpu_pick_the_cpu(monkeypatch):
    from alignpipe.models import bind_process_device

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bind_process_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert bind_process_device() == torch.device("cpu")


def test_the_launch_entry_binds_the_device_before_the_stage_runs(two_gpus, monkeypatch, tmp_path):
    """alignpipe.stages.launch.main on rank 1: cuda:1 is current before the stage loads anything."""
    import alignpipe.stages.launch as launch

    monkeypatch.setenv("LOCAL_RANK", "1")
    seen = []

    class Observer:  # stands in for a stage: records the bound devices when it starts
        from pipeline_config.slices import StageConfig as config

        def run(self, ctx):
            seen.append(list(two_gpus))
            return {}

    monkeypatch.setattr(launch, "get_stage", lambda name: Observer())
    argv = ["--stage", "dpo", "--config", "{}", "--out", str(tmp_path), "--inputs", "{}",
            "--metrics-log", str(tmp_path / "m.jsonl"), "--result", str(tmp_path / "r.json"), "--say-log", str(tmp_path / "s.log")]  # fmt: skip
    launch.main(argv)
    assert seen == [[1]]


def test_model_dtype_names_the_training_autocast():
    """model.dtype reaches training: bfloat16 is bf16 autocast (CPU too), float32 none, auto by device."""
    from alignpipe.train.precision import autocast, autocast_dtype

    assert autocast_dtype("cpu", "bfloat16") == torch.bfloat16 and autocast_dtype("cpu", "float32") is None
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cuda", "auto") == torch.bfloat16
    assert autocast_dtype("cuda", "float32") is None
    with autocast("cpu", "bfloat16"):
        assert torch.is_autocast_enabled("cpu") and (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")


def test_bfloat16_model_dtype_trains_under_bf16_autocast_and_step0_is_log2(tiny_model_dir, smol_tokenizer):
    model = load_causal_lm(tiny_model_dir)
    items = preference_items(model, smol_tokenizer, precision="bfloat16")
    cfg = dpo_config(max_steps=1)
    first = train(model, items, objective(model, smol_tokenizer, cfg), cfg, precision="bfloat16").history[0]
    assert first["loss"] == pytest.approx(LOG2, abs=1e-6)
    fp32_items = preference_items(load_causal_lm(tiny_model_dir), smol_tokenizer, precision="float32")
    assert max(abs(a.ref_chosen - b.ref_chosen) for a, b in zip(items, fp32_items)) > 1e-6  # the regime really differs
