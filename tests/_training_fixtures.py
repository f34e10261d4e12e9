"""Small, deterministic DPO training setups shared by the loop and multi-process tests."""
from __future__ import annotations

from alignpipe.dpo.objective import DPOObjective, PreferenceItem
from alignpipe.dpo.scoring import pair_collator, tokenized_pair_logps
from alignpipe.tokenization import tokenize_pairs
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


def preference_items(model, tokenizer, n: int = 32) -> list[PreferenceItem]:
    pairs, _ = tokenize_pairs(tokenizer, synthetic_records(n), max_length=64, max_prompt_length=32)
    chosen, rejected = tokenized_pair_logps(model, pairs, tokenizer.pad_token_id, batch_size=8)
    return [PreferenceItem(p, float(c), float(r)) for p, c, r in zip(pairs, chosen, rejected)]


def dpo_config(**kw) -> DPOConfig:
    base = dict(lr=1e-3, batch_size=8, micro_batch_size=4, warmup_steps=2, epochs=2, max_length=64, max_prompt_length=32)
    base.update(kw)
    return DPOConfig(**base)


def objective(model, tokenizer, cfg: DPOConfig) -> DPOObjective:
    return DPOObjective(cfg, pair_collator(model, tokenizer.pad_token_id, "on"))
