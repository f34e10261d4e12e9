"""The whole pipeline, real stages, on the tiny random model: a config that runs in seconds."""
from __future__ import annotations

from pathlib import Path

import yaml

ALL_STAGES = ["sft", "pairs", "reference", "dpo", "evaluate", "ood", "report"]


def tiny_pipeline_config(tmp_path: Path, model_dir: Path, name: str = "tiny.yaml", **sections) -> Path:
    """A YAML config extending the demo preset, shrunk so each stage takes a second or two."""
    cfg = {
        "extends": "demo",
        "preset": "tiny",
        "run_dir": str(tmp_path / "run"),
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "model": {"name_or_path": str(model_dir)},
        "data": {"sft_size": 16, "prompt_size": 6, "eval_size": 6},
        "sft": {"batch_size": 8, "micro_batch_size": 4},
        # all pairs of each prompt (the demo keeps only the best-vs-worst one): enough pairs from 6 prompts
        "pairs": {"pairing": "all", "generation": {"max_new_tokens": 10}},
        "dpo": {"batch_size": 4, "micro_batch_size": 4, "epochs": 1, "checkpoint_every": 2},
        "evaluate": {"n_prompts": 6, "temperatures": [1.0], "generation": {"max_new_tokens": 10}, "checkpoints": 4,
                     "baselines": ["sft", "best_of_n"], "best_of_n": 3},
        "ood": {"n_articles": 4, "temperatures": [0.0], "generation": {"max_new_tokens": 10}},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


PROMPTS = ["The film was", "I watched it and", "Honestly the acting", "What a", "My brother said it"]


def perturbed_model(model_dir, scale=0.05, seed=1):
    """The tiny model with seeded Gaussian noise on every weight: a second policy near the first."""
    import torch

    from alignpipe.models import load_causal_lm

    other = load_causal_lm(model_dir).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * scale)
    return other
