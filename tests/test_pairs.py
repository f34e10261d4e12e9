"""Preference pairs from scored samples: all orderings, best-vs-worst, ties and empty samples."""
import pytest

from alignpipe.pairs import PairStats, pairs_from_scores


def _pairs(comps, scores, pairing="all", min_margin=0.0):
    stats = PairStats()
    rows = pairs_from_scores("p", comps, scores, pairing=pairing, min_margin=min_margin, stats=stats, prompt_index=0)
    return rows, stats


def test_all_orderings_of_four_samples_give_six_pairs_chosen_higher():
    rows, stats = _pairs([" a", " b", " c", " d"], [0.1, 0.9, -0.5, 0.3])
    assert len(rows) == 6 and stats.pairs == 6 and stats.ties == 0
    assert all(r["chosen_score"] > r["rejected_score"] and r["margin"] == pytest.approx(r["chosen_score"] - r["rejected_score"]) for r in rows)
    assert {(r["chosen"], r["rejected"]) for r in rows} >= {(" b", " c"), (" d", " a")}


def test_ties_are_dropped_and_counted():
    rows, stats = _pairs([" a", " b", " c"], [0.5, 0.5, 0.52], min_margin=0.05)
    assert rows == [] and stats.ties == 3


def test_best_vs_worst():
    rows, stats = _pairs([" a", " b", " c", " d"], [0.1, 0.9, -0.5, 0.3], pairing="best_worst")
    assert [(r["chosen"], r["rejected"])for r in rows] == [(" b", " c")]


def test_empty_samples_are_skipped_and_counted():
    rows, stats = _pairs([" a", "", "  ", " d"], [0.1, 0.9, 0.8, 0.5])
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(" d", " a")]
    assert stats.empty == 2 and stats.as_metrics()["empty_samples"] == 2


def test_identical_texts_are_ties():
    rows, stats = _pairs([" same", " same"], [0.1, 0.9])
    assert rows == [] and stats.ties == 1


def test_margin_histogram_counts_every_pair():
    _, stats = _pairs([" a", " b", " c", " d"], [0.1, 0.9, -0.5, 0.3])
    hist = stats.margin_histogram(bins=4)
    assert sum(hist["counts"]) == 6 and len(hist["edges"]) == 5


def test_unknown_pairing_is_an_error():
    with pytest.raises(ValueError, match="pairs.pairing"):
        _pairs([" a", " b"], [0.0, 1.0], pairing="random")


def test_judge_labels_become_copeland_scores(tmp_path):
    """labeler=judge: every within-prompt pair is judged in one call; wins become per-sample scores."""
    from alignpipe.judge import make_judge
    from alignpipe.judge.tournament import copeland_scores
    from pipeline_config.schema import JudgeConfig

    judge = make_judge(JudgeConfig(backend="reward", reward="vader"), tmp_path)
    prompts = ["Review:", "Film:"]
    completions = [[" wonderful, great, loved it", " terrible and awful", " it was fine"], [" bad", " superb and delightful"]]
    scores = copeland_scores(judge, prompts, completions)
    assert scores[0] == [2.0, 0.0, 1.0]  # each sample's wins against the other two
    assert scores[1] == [0.0, 1.0]


@pytest.mark.parametrize("task", ["hh", "tldr"])
def test_human_pairs_stage_imports_real_samples(task, shared_data, tmp_path):
    """pairs.source=human: the real HH / TL;DR comparison samples become the same pairs table."""
    from alignpipe.stages.artifacts import read_pairs
    from alignpipe.stages.base import StageContext
    from alignpipe.stages.pairs_stage import SPEC
    from pipeline_config.schema import PipelineConfig

    cfg = PipelineConfig.model_validate(
        {"data": {"task": task, "dir": str(shared_data), "prompt_size": 30, "eval_size": 4}, "pairs": {"source": "human"}}
    )
    metrics = SPEC.run(StageContext(config=SPEC.config.of(cfg), out_dir=tmp_path, inputs={}))
    rows = read_pairs(tmp_path)
    assert metrics["pairs"] == len(rows) > 0 and all(r["source"] == "human" for r in rows)
    assert all(r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"] for r in rows)
    if task == "hh":
        assert all(r["prompt"].endswith("\n\nAssistant:") for r in rows)
