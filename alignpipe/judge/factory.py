"""make_judge: JudgeConfig -> a ready Judge. Backends are imported only when chosen."""
from __future__ import annotations

from pathlib import Path

from alignpipe.judge.judge import Judge
from pipeline_config.schema import JudgeConfig


def make_judge(cfg: JudgeConfig, cache_dir: Path, *, backoff_base_s: float = 1.0, backoff_max_s: float = 60.0) -> Judge:
    """Build the judge that `cfg` describes; verdicts are cached under `cache_dir`.

    backoff_base_s / backoff_max_s tune the openai backend's retry waits (tests make them tiny);
    they are deliberately not config: they change how long a run takes, never its result.
    """
    if cfg.backend == "openai":
        from alignpipe.judge.openai_backend import OpenAIBackend

        backend = OpenAIBackend(
            cfg.model,
            cfg.template,
            base_url=cfg.base_url,
            concurrency=cfg.concurrency,
            max_retries=cfg.max_retries,
            timeout_s=cfg.timeout_s,
            price_per_1k_input=cfg.price_per_1k_input,
            price_per_1k_output=cfg.price_per_1k_output,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
        )
    elif cfg.backend == "reward":
        from alignpipe.judge.reward_backend import RewardBackend
        from alignpipe.rewards import make_scorer

        backend = RewardBackend(make_scorer(cfg.reward, cfg.reward_model))
    elif cfg.backend == "local":
        from alignpipe.judge.local_backend import LocalLMBackend

        if not cfg.local_model:
            raise ValueError("judge.local_model: backend 'local' needs the path of an HF causal LM")
        backend = LocalLMBackend(cfg.local_model, cfg.template)
    else:
        raise ValueError(f"judge.backend: unknown backend '{cfg.backend}' (choose from: openai, reward, local)")
    return Judge(
        backend,
        cache_dir,
        template=cfg.template,
        both_orders=cfg.both_orders,
        seed=cfg.seed,
        max_invalid_fraction=cfg.max_invalid_fraction,
    )


def check_judge(cfg: JudgeConfig, where: str) -> None:
    """What make_judge would refuse, found before any model loads (the stages' preflight): a
    missing API key, a missing local judge model, a reward classifier without a model."""
    if cfg.backend == "openai":
        from alignpipe.judge.openai_backend import api_key_from_env

        try:
            api_key_from_env()
        except RuntimeError as e:
            raise ValueError(f"{where}: {e}") from None
    elif cfg.backend == "local":
        if not cfg.local_model:
            raise ValueError(f"{where}.local_model: backend 'local' needs the path of an HF causal LM")
        if not Path(cfg.local_model).exists():
            raise ValueError(f"{where}.local_model: '{cfg.local_model}' does not exist (a local HF model directory)")
    elif cfg.reward == "hf_classifier" and not cfg.reward_model:
        raise ValueError(f"{where}.reward_model: reward 'hf_classifier' needs a model (e.g. siebert/sentiment-roberta-large-english)")
