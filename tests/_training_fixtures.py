"""Small, deterministic DPO training setups shared by the loop and multi-process tests."""
from __future__ import annotations

from alignpipe.dpo.objective import DPOObjective, PreferenceItem
from alignpipe.dpo.scoring import pair_collator
from alignpipe.tokenization import tokenize_pairs
from alignpipe.train.precision import reference_pair_logps
from pipeline_config.schema import DPOConfig


def synthetic_records(n: int = 32) -> list[dict]:
    return [
        {
            "prompt": f"Review {i}: the film",
            "chosen": " was wonderful and great" * (1 + i % 3),
            "rejected": " was bad" + " really" * (i % 4),
        }
        for i in range(n)
    ]


def preference_items(model, tokenizer, n: int = 32, precision: str = "auto") -> list[PreferenceItem]:
    pairs, _ = tokenize_pairs(tokenizer, synthetic_records(n), max_length=64, max_prompt_length=32)
    chosen, rejected = reference_pair_logps(model, pairs, tokenizer.pad_token_id, batch_size=8, precision=precision)
    return [PreferenceItem(p, float(c), float(r)) for p, c, r in zip(pairs, chosen, rejected)]


def dpo_config(**kw) -> DPOConfig:
    base = dict(lr=1e-3, batch_size=8, micro_batch_size=4, warmup_steps=2, epochs=2, max_length=64, max_prompt_length=32)
    base.update(kw)
    return DPOConfig(**base)


def objective(model, tokenizer, cfg: DPOConfig, prefix_sharing: str = "on") -> DPOObjective:
    return DPOObjective(cfg, pair_collator(model, tokenizer.pad_token_id, prefix_sharing))


def build_tiny_with_dropout(arch: str, out_dir, tokenizer, p: float = 0.1, seed: int = 0):
    """A tiny random model of `arch` with dropout p in attention and in the hidden states where the
    architecture has it (GPT-2: attn/resid/embd_pdrop; GPT-NeoX: attention/hidden_dropout; Llama:
    attention_dropout only)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    configs = {
        "gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256, attn_pdrop=p, resid_pdrop=p, embd_pdrop=p, **ids),
        "gpt_neox": lambda: GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=256, attention_dropout=p, hidden_dropout=p, tie_word_embeddings=False, **ids,
        ),
        "llama": lambda: LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=256, attention_dropout=p, tie_word_embeddings=True, **ids,
        ),
    }  # fmt: skip
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(configs[arch]()).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
