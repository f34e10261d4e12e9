"""Evaluation settings fail at load, in one line naming the setting, when they cannot mean what they say."""
import pytest

from pipeline_config import load_config
from pipeline_config.loading import ConfigError


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["evaluate.temperatures=[0.5]"], ["evaluate", "headline_temperature 1 is not one of the evaluated temperatures [0.5]"]),
        (["ood.headline_temperature=0.7"], ["ood", "headline_temperature 0.7"]),
        (["evaluate.generation.top_p=0.9"], ["evaluate", "compute_kl needs generation.top_p 1"]),
        (["evaluate.judge.backend=openai"], ["evaluate", "compute_kl", "judge.backend 'reward'"]),
        (["evaluate.checkpoints=7"], ["evaluate.checkpoints: 7 must be a multiple of dpo.checkpoint_every (5)"]),
        (["evaluate.checkpoints=10", "dpo.checkpoint_every=0"], ["evaluate.checkpoints: 10 must be a multiple of dpo.checkpoint_every (0)"]),
        (["evaluate.baselines=[sft, best_of_n]", "pairs.source=human", "data.task=hh"], ["evaluate.baselines: 'best_of_n' needs pairs.source 'sampled'"]),
        (["evaluate.human_agreement=8"], ["evaluate.human_agreement: task 'imdb' has no human-labelled pairs"]),
        (["evaluate.best_of_n=1"], ["evaluate.best_of_n", "greater than or equal to 2"]),
        (["evaluate.bootstrap_samples=2000"], ["evaluate.bootstrap_samples: unknown key"]),  # removed: intervals need no resampling
    ],
    ids=["headline-not-evaluated", "ood-headline", "kl-with-nucleus", "kl-without-reward", "checkpoints-not-multiple",
         "checkpoints-without-training-checkpoints", "best-of-n-without-labeller", "agreement-without-human-pairs",
         "best-of-one", "removed-resampling-setting"],  # fmt: skip
)
def test_bad_evaluation_settings_fail_at_load_in_one_line(overrides, needles):
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=overrides)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_the_demo_preset_evaluates_what_the_issue_asks():
    cfg = load_config("demo")
    ev = cfg.evaluate
    assert ev.headline_temperature == 1.0 and 1.0 in ev.temperatures and ev.compute_kl
    assert ev.baselines == ["sft"] and ev.checkpoints == 5 and ev.checkpoints % cfg.dpo.checkpoint_every == 0
    assert "best_of_n" in load_config("imdb").evaluate.baselines  # the paper-scale preset has the best-of-N baseline
    assert cfg.data.prefix_tokens == (2, 8) and cfg.data.builtin_fallback
    assert load_config("demo", overrides=["evaluate.temperatures=[0.5]", "evaluate.headline_temperature=0.5", "evaluate.compute_kl=false"])
