"""What the pipeline stages ask for: SFT examples, generation prompts (train, or held-out eval),
human preference pairs and out-of-distribution articles. Plain lists of dicts, deterministic given
`cfg.seed`.

Train and eval never share a prompt: the records are grouped by their generation prompt, the groups
are shuffled with the seed, and the first `cfg.eval_size` groups (at most half) are held out for
evaluation; SFT examples, training prompts and human pairs come only from the other groups.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from alignpipe.data import adapters, formats
from alignpipe.data.builtin import BUILTIN_FILES, builtin_records
from alignpipe.data.records import RecordError, read_rows, validated
from alignpipe.data.sources import SourceUnavailable, resolve_data_dir
from pipeline_config.schema import DataConfig

log = logging.getLogger(__name__)

LOADERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "imdb": adapters.imdb,
    "tldr": adapters.tldr,
    "tldr_comparisons": adapters.tldr_comparisons,
    "hh_rlhf": adapters.hh_rlhf,
    "cnn_dailymail": adapters.cnn_dailymail,
    "ultrafeedback": adapters.ultrafeedback,
}
# The dataset behind each task's prompts and SFT data, and the hub split used as its pool.
TASK_DATASET = {"imdb": ("imdb", "train"), "tldr": ("tldr", "train"), "hh": ("hh_rlhf", "train"),
                "ultrafeedback": ("ultrafeedback", "train_prefs")}
# Human preference pairs: TL;DR pairs come from the separate comparisons dataset.
PAIR_DATASET = {"tldr": ("tldr_comparisons", "train"), "hh": ("hh_rlhf", "train"),
                "ultrafeedback": ("ultrafeedback", "train_prefs")}


def load_source(name: str, data_dir: Optional[str | Path], split: str, *, builtin_fallback: bool = False) -> list[dict[str, Any]]:
    """A dataset's records from the data dir (or env ALIGNPIPE_DATA_DIR), else the hub, else
    (builtin_fallback, IMDb and CNN/DailyMail only) the built-in set."""
    loader = LOADERS[name]
    kwargs = {"strict": False} if name == "hh_rlhf" else {}  # the public HH data has a few broken pairs
    try:
        return loader(resolve_data_dir(data_dir), split, **kwargs)
    except SourceUnavailable as e:
        if builtin_fallback and name in BUILTIN_FILES:
            log.warning("%s; using the built-in %s set (%s)", e, name, BUILTIN_FILES[name])
            return builtin_records(name)
        hint = " (set data.builtin_fallback for the small built-in set)" if name in BUILTIN_FILES else ""
        raise SourceUnavailable(f"{e}{hint}") from None


def sft_examples(cfg: DataConfig, n: Optional[int] = None) -> list[dict[str, str]]:
    """[{prompt, completion}] for supervised fine-tuning (default n: cfg.sft_size).

    IMDb: prompt "" and a whole review; TL;DR: post -> human summary; HH / UltraFeedback / local:
    prompt -> chosen reply (the DPO paper's "Preferred-FT").
    """
    n = _check_n(cfg.sft_size if n is None else n)
    train, _ = _train_eval(cfg)
    examples = [ex for group in train for ex in group]
    random.Random(f"{cfg.seed}:sft").shuffle(examples)
    out = []
    for ex in examples:
        if ex["sft_completion"] is None:
            raise RecordError(f"{ex['where']}: field 'chosen' is missing (SFT needs a completion)")
        out.append({"prompt": ex["sft_prompt"], "completion": ex["sft_completion"]})
        if len(out) == n:
            break
    return _enough(out, n, f"SFT examples for task '{cfg.task}'")


def generation_prompts(cfg: DataConfig, split: Literal["train", "eval"], n: Optional[int] = None) -> list[dict[str, Optional[str]]]:
    """[{prompt, reference}] to sample from: "train" for preference pairs (default n:
    cfg.prompt_size), "eval" held out for evaluation (default n: cfg.eval_size). Prompts are unique.

    IMDb: a review's first k words, k drawn from cfg.prefix_tokens, reference None; TL;DR: the post,
    reference the human summary; HH / UltraFeedback / local: the dialogue, reference the chosen reply.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    n = _check_n((cfg.prompt_size if split == "train" else cfg.eval_size) if n is None else n)
    train, held_out = _train_eval(cfg)
    groups = train if split == "train" else held_out
    out = [{"prompt": group[0]["prompt"], "reference": group[0]["reference"]} for group in groups[:n]]
    return _enough(out, n, f"{split} prompts for task '{cfg.task}'")


def human_pairs(cfg: DataConfig, n: int) -> list[dict[str, str]]:
    """[{prompt, chosen, rejected}] human preference pairs: TL;DR comparisons, HH, UltraFeedback,
    or a local file with chosen and rejected columns. HH / UltraFeedback / local exclude eval prompts."""
    n = _check_n(n)
    if cfg.task == "tldr":
        name, split = PAIR_DATASET["tldr"]
        pairs = load_source(name, cfg.dir, split)
    elif cfg.task in ("hh", "ultrafeedback", "local"):
        train, _ = _train_eval(cfg)
        pairs = [{"prompt": ex["prompt"], "chosen": ex["chosen"], "rejected": ex["rejected"]}
                 for group in train for ex in group if ex["chosen"] is not None and ex["rejected"] is not None]
        if not pairs:
            raise ValueError(f"{cfg.local_path}: no record has both 'chosen' and 'rejected' (map them with data.column_map)")
    else:
        raise ValueError(f"task '{cfg.task}' has no human preference pairs (use pairs.source: sampled)")
    random.Random(f"{cfg.seed}:pairs").shuffle(pairs)
    return _enough(pairs[:n], n, f"human pairs for task '{cfg.task}'")


def ood_articles(data_dir: Optional[str | Path], n: int, *, builtin_fallback: bool = False) -> list[dict[str, str]]:
    """The first n CNN/DailyMail test articles [{id, article, highlights}], in source order."""
    n = _check_n(n)
    records = load_source("cnn_dailymail", data_dir, "test", builtin_fallback=builtin_fallback)
    return _enough(records[:n], n, "CNN/DailyMail articles")


TLDR_TEMPLATE = "SUBREDDIT: r/news\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"


def ood_prompt(task: str, article: str, article_chars: Optional[int]) -> str:
    """An article as the policy sees it: the (cut) article itself for sentiment policies, else in the
    TL;DR format the summarization policy was trained on, with the article as the post."""
    text = article[:article_chars].rsplit(" ", 1)[0] if article_chars and len(article) > article_chars else article
    if task in ("imdb",):
        return text
    first_sentence = text.split(". ")[0][:120]
    return TLDR_TEMPLATE.format(title=first_sentence, post=text)


def ood_prompts(cfg: DataConfig, n: int, article_chars: Optional[int]) -> list[dict[str, str]]:
    """[{prompt, reference}] for the OOD test: CNN/DailyMail articles, reference = their highlights."""
    articles = ood_articles(cfg.dir, n, builtin_fallback=cfg.builtin_fallback)
    return [{"prompt": ood_prompt(cfg.task, a["article"], article_chars), "reference": " " + a["highlights"].replace("\n", " ")}
            for a in articles]


def describe_source(cfg: DataConfig) -> str:
    """Where this config's data comes from, for messages: the file or dir, or the hub."""
    if cfg.task == "local":
        return f"data.local_path {cfg.local_path}"
    if cfg.dir:
        return f"data.dir {cfg.dir}"
    return f"task '{cfg.task}' from the hub" + (" (or the built-in set)" if cfg.builtin_fallback else "")


def _train_eval(cfg: DataConfig) -> tuple[list[list[dict]], list[list[dict]]]:
    """(train groups, held-out eval groups); a group is the examples that share one generation prompt."""
    groups: dict[str, list[dict]] = {}
    for ex in _examples(cfg):
        groups.setdefault(ex["prompt"], []).append(ex)
    ordered = list(groups.values())
    random.Random(f"{cfg.seed}:split").shuffle(ordered)
    n_eval = min(cfg.eval_size, len(ordered) // 2)
    return ordered[n_eval:], ordered[:n_eval]


def _examples(cfg: DataConfig) -> list[dict[str, Any]]:
    """Every source record of the task as {prompt, reference, sft_prompt, sft_completion, chosen, rejected}."""
    if cfg.task == "local":
        if not cfg.local_path:
            raise ValueError("data.local_path is required for task 'local'")
        path = Path(cfg.local_path)
        rows = validated(read_rows(path), str(path), adapters.LOCAL_FIELDS, cfg.column_map)
        return [{**_example(r["prompt"], r["chosen"], r["prompt"], r["chosen"], r["chosen"], r["rejected"]),
                 "where": f"{path}:{line_no}"} for line_no, r in rows]
    name, split = TASK_DATASET[cfg.task]
    records = load_source(name, cfg.dir, split, builtin_fallback=cfg.builtin_fallback)
    if cfg.task == "imdb":
        return _imdb_examples(records, cfg)
    if cfg.task == "tldr":
        return [_example(r["prompt"], formats.tldr_summary(r["label"]), r["prompt"], formats.tldr_summary(r["label"]))
                for r in records]
    return [_example(r["prompt"], r["chosen"], r["prompt"], r["chosen"], r["chosen"], r["rejected"]) for r in records]


def _imdb_examples(records: list[dict[str, Any]], cfg: DataConfig) -> list[dict[str, Any]]:
    low, high = cfg.prefix_tokens
    if not 1 <= low <= high:
        raise ValueError(f"data.prefix_tokens must be (low, high) with 1 <= low <= high, got {cfg.prefix_tokens}")
    rng = random.Random(f"{cfg.seed}:prefix")
    examples = []
    for record in records:
        review = formats.clean_imdb_markup(record["text"])
        prefix = formats.word_prefix(review, rng.randint(low, high))
        examples.append(_example(prefix, None, "", review))
    return examples


def _example(prompt, reference, sft_prompt, sft_completion, chosen=None, rejected=None) -> dict[str, Any]:
    return {"prompt": prompt, "reference": reference, "sft_prompt": sft_prompt,
            "sft_completion": sft_completion, "chosen": chosen, "rejected": rejected}


def _check_n(n: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return n


def _enough(items: list, n: int, what: str) -> list:
    if len(items) < n:
        log.warning("asked for %d %s, only %d available", n, what, len(items))
    return items
