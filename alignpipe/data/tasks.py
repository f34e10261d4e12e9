"""What the pipeline stages ask for: SFT examples, generation prompts (train, or held-out eval),
human preference pairs, human-labelled pairs for checking a judge, and out-of-distribution articles.
Plain lists of dicts, deterministic given `cfg.seed`.

Evaluation is held out, and from the test split where the dataset has one:
- with a test split (the hub's, or `<dir>/<name>.test.jsonl` in a data dir), SFT examples, training
  prompts and human pairs come from the training data and evaluation prompts from the test split;
- without one (a single data-dir file, the built-in set), the records are grouped (by prompt; IMDb
  by review), the groups shuffled with the seed, and the first `cfg.eval_size` groups (at most half)
  are held out for evaluation; training data comes only from the other groups.
Training and evaluation of one task come from one source: a held-out split read from a data dir
or the hub while training falls back to the built-in sample is refused (the built-in IMDb reviews
are aclImdb *test* reviews, so a `<dir>/imdb.test.jsonl` of aclImdb's test split holds them too).
Either way the evaluate stage then removes any evaluation prompt that equals a training text, or
whose source text does (`source`: the IMDb review it was cut from; alignpipe.data.overlap), and
counts it: the TL;DR comparisons, for one, are a separate dataset over posts that a held-out split
cannot see, and an IMDb review SFT saw whole must not open an evaluation prompt.

IMDb prompts are a review's first k tokens, k drawn per review from cfg.prefix_tokens (the paper's
2 to 8), so prompts need the model's tokenizer.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from alignpipe.data import adapters, formats
from alignpipe.data.builtin import BUILTIN_FILES, builtin_records
from alignpipe.data.records import RecordError, read_rows, validated
from alignpipe.data.sources import EVAL_SPLITS, HUB_DATASETS, SourceUnavailable, hub_source_label, resolve_data_dir
from pipeline_config.schema import DataConfig

log = logging.getLogger(__name__)
BUILTIN_LABEL_START = "the built-in "  # how load_source_from names the built-in sample it fell back to

LOADERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "imdb": adapters.imdb,
    "tldr": adapters.tldr,
    "tldr_comparisons": adapters.tldr_comparisons,
    "hh_rlhf": adapters.hh_rlhf,
    "cnn_dailymail": adapters.cnn_dailymail,
    "ultrafeedback": adapters.ultrafeedback,
}
# The dataset behind each task's prompts and SFT data, and the hub split used as its training pool.
TASK_DATASET = {"imdb": ("imdb", "train"), "tldr": ("tldr", "train"), "hh": ("hh_rlhf", "train"),
                "ultrafeedback": ("ultrafeedback", "train_prefs")}
# Human preference pairs: TL;DR pairs come from the separate comparisons dataset.
PAIR_DATASET = {"tldr": ("tldr_comparisons", "train"), "hh": ("hh_rlhf", "train"),
                "ultrafeedback": ("ultrafeedback", "train_prefs")}


@dataclass
class TaskSplit:
    """A task's records grouped by generation prompt: training groups, evaluation groups, and where
    the evaluation groups come from (for the report)."""

    train: list[list[dict]]
    eval: list[list[dict]]
    eval_source: str


def load_source(name: str, data_dir: Optional[str | Path], split: str, *, builtin_fallback: bool = False) -> list[dict[str, Any]]:
    """A dataset's records from the data dir (or env ALIGNPIPE_DATA_DIR), else the hub, else
    (builtin_fallback, IMDb and CNN/DailyMail only) the built-in set."""
    return load_source_from(name, data_dir, split, builtin_fallback=builtin_fallback)[0]


def load_source_from(name: str, data_dir: Optional[str | Path], split: str, *, builtin_fallback: bool = False) -> tuple[list[dict[str, Any]], str]:
    """(records, where they were read from): the file, the hub split, or the built-in sample."""
    loader = LOADERS[name]
    kwargs = {"strict": False} if name == "hh_rlhf" else {}  # the public HH data has a few broken pairs
    directory = resolve_data_dir(data_dir)
    try:
        records = loader(directory, split, **kwargs)
    except SourceUnavailable as e:
        if builtin_fallback and name in BUILTIN_FILES:
            log.warning("%s; using the built-in %s set (%s)", e, name, BUILTIN_FILES[name])
            return builtin_records(name), f"{BUILTIN_LABEL_START}{name} sample (alignpipe/builtin_data/{BUILTIN_FILES[name]})"
        hint = " (set data.builtin_fallback for the small built-in set)" if name in BUILTIN_FILES else ""
        raise SourceUnavailable(f"{e}{hint}") from None
    where = str(directory / f"{name}.jsonl") if directory is not None else hub_source_label(HUB_DATASETS[name], split)
    return records, where


def load_eval_source(name: str, data_dir: Optional[str | Path]) -> Optional[tuple[list[dict[str, Any]], str]]:
    """(records, where) of the dataset's held-out split: `<dir>/<name>.test.jsonl` with a data dir,
    else the hub's split; None when there is none to read (then evaluation is held out of the one file)."""
    split = EVAL_SPLITS.get(name)
    if split is None:
        return None
    kwargs = {"strict": False} if name == "hh_rlhf" else {}
    directory = resolve_data_dir(data_dir)
    try:
        records = LOADERS[name](directory, split, **kwargs)
    except SourceUnavailable:
        return None
    where = str(directory / f"{name}.test.jsonl") if directory is not None else hub_source_label(HUB_DATASETS[name], split)
    return records, where


def sft_examples(cfg: DataConfig, n: Optional[int] = None) -> list[dict[str, str]]:
    """[{prompt, completion}] for supervised fine-tuning (default n: cfg.sft_size).

    IMDb: prompt "" and a whole review; TL;DR: post -> human summary; HH / UltraFeedback / local:
    prompt -> chosen reply (the DPO paper's "Preferred-FT").
    """
    n = _check_n(cfg.sft_size if n is None else n)
    examples = [ex for group in task_split(cfg).train for ex in group]
    random.Random(f"{cfg.seed}:sft").shuffle(examples)
    out = []
    for ex in examples:
        if ex["sft_completion"] is None:
            raise RecordError(f"{ex['where']}: field 'chosen' is missing (SFT needs a completion)")
        out.append({"prompt": ex["sft_prompt"], "completion": ex["sft_completion"]})
        if len(out) == n:
            break
    return _enough(out, n, f"SFT examples for task '{cfg.task}'")


def generation_prompts(
    cfg: DataConfig, split: Literal["train", "eval"], n: Optional[int] = None, tokenizer=None
) -> list[dict[str, Optional[str]]]:
    """[{prompt, reference[, source]}] to sample from: "train" for preference pairs (default n:
    cfg.prompt_size), "eval" for evaluation (default n: cfg.eval_size). Prompts are unique.

    IMDb: a review's first k tokens (tokenizer required), k drawn from cfg.prefix_tokens, reference
    None; TL;DR: the post, reference the human summary; HH / UltraFeedback / local: the dialogue,
    reference the chosen reply. `source`, where the prompt is cut from a longer text, is that text
    (the whole IMDb review), for the overlap check against training texts.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    n = _check_n((cfg.prompt_size if split == "train" else cfg.eval_size) if n is None else n)
    parts = task_split(cfg)
    out: list[dict[str, Optional[str]]] = []
    seen: set[str] = set()
    for group in parts.train if split == "train" else parts.eval:
        prompt = _generation_prompt(group[0], cfg, tokenizer)
        if prompt in seen:  # two IMDb reviews may open with the same few tokens
            continue
        seen.add(prompt)
        source = _source_text(group[0], cfg)
        out.append({"prompt": prompt, "reference": group[0]["reference"], **({"source": source} if source != prompt else {})})
        if len(out) == n:
            break
    return _enough(out, n, f"{split} prompts for task '{cfg.task}'")


def human_pairs(cfg: DataConfig, n: int) -> list[dict[str, str]]:
    """[{prompt, chosen, rejected}] human preference pairs: TL;DR comparisons, HH, UltraFeedback,
    or a local file with chosen and rejected columns. HH / UltraFeedback / local exclude eval prompts."""
    n = _check_n(n)
    if cfg.task == "tldr":
        name, split = PAIR_DATASET["tldr"]
        pairs = load_source(name, cfg.dir, split)
    elif cfg.task in ("hh", "ultrafeedback", "local"):
        pairs = _pairs_of(task_split(cfg).train)
        if not pairs:
            raise ValueError(f"{cfg.local_path}: no record has both 'chosen' and 'rejected' (map them with data.column_map)")
    else:
        raise ValueError(f"task '{cfg.task}' has no human preference pairs (use pairs.source: sampled)")
    random.Random(f"{cfg.seed}:pairs").shuffle(pairs)
    return _enough(pairs[:n], n, f"human pairs for task '{cfg.task}'")


def human_label_pairs(cfg: DataConfig, n: int) -> tuple[list[dict[str, str]], str]:
    """(pairs, where from): n human-labelled pairs {prompt, chosen, rejected} to check a judge against
    (the paper's section 6.4). TL;DR: the comparisons' held-out split when there is one, else the
    comparisons file (the judge is not trained, so DPO having trained on them does not bias it);
    HH / UltraFeedback / local: the evaluation split's pairs."""
    n = _check_n(n)
    if cfg.task == "tldr":
        held_out = load_eval_source("tldr_comparisons", cfg.dir)
        if held_out is not None:
            pairs, where = held_out
        else:
            name, split = PAIR_DATASET["tldr"]
            pairs, where = load_source_from(name, cfg.dir, split)
            where += " (the comparisons DPO trains on: no held-out comparisons beside it)"
    elif cfg.task in ("hh", "ultrafeedback", "local"):
        parts = task_split(cfg)
        pairs, where = _pairs_of(parts.eval), parts.eval_source
    else:
        raise ValueError(f"task '{cfg.task}' has no human-labelled pairs to check a judge against")
    if not pairs:
        raise ValueError(f"{where}: no human-labelled pairs (records with both 'chosen' and 'rejected')")
    pairs = list(pairs)
    random.Random(f"{cfg.seed}:human-labels").shuffle(pairs)
    return _enough(pairs[:n], n, f"human-labelled pairs for task '{cfg.task}'"), where


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
    """[{prompt, reference, source}] for the OOD test: CNN/DailyMail articles, reference = their highlights."""
    return ood_prompts_from(cfg, n, article_chars)[0]


def ood_prompts_from(cfg: DataConfig, n: int, article_chars: Optional[int]) -> tuple[list[dict[str, str]], str]:
    """(OOD prompts, where they were read from, in words): the label names the file, hub split or
    built-in sample actually read, never an assumed one."""
    n = _check_n(n)
    records, where = load_source_from("cnn_dailymail", cfg.dir, "test", builtin_fallback=cfg.builtin_fallback)
    articles = _enough(records[:n], n, "CNN/DailyMail articles")
    prompts = [{"prompt": ood_prompt(cfg.task, a["article"], article_chars), "reference": " " + a["highlights"].replace("\n", " "),
                "source": a["article"]} for a in articles]  # fmt: skip
    return prompts, f"the first {len(articles)} CNN/DailyMail articles of {where}"


def describe_source(cfg: DataConfig) -> str:
    """Where this config's data comes from, for messages: the file or dir, or the hub."""
    if cfg.task == "local":
        return f"data.local_path {cfg.local_path}"
    if cfg.dir:
        return f"data.dir {cfg.dir}"
    return f"task '{cfg.task}' from the hub" + (" (or the built-in set)" if cfg.builtin_fallback else "")


def task_split(cfg: DataConfig) -> TaskSplit:
    """The task's records as training and evaluation groups (see the module docstring)."""
    examples, where = _examples(cfg)
    held_out = None if cfg.task == "local" else load_eval_source(TASK_DATASET[cfg.task][0], cfg.dir)
    if held_out is not None and where.startswith(BUILTIN_LABEL_START):
        name = TASK_DATASET[cfg.task][0]
        field = f"data.dir {cfg.dir}" if cfg.dir else "data"
        raise ValueError(
            f"{field}: task '{cfg.task}' would train on {where} but evaluate on {held_out[1]}: one task's training and "
            f"evaluation must come from one source (put {name}.jsonl beside the test split, or remove the test split to "
            f"hold evaluation out of the built-in sample)"
        )
    train = _shuffled_groups(examples, cfg.seed)
    if held_out is not None:
        test_examples = _task_examples(cfg, held_out[0])
        return TaskSplit(train, _shuffled_groups(test_examples, cfg.seed)[: cfg.eval_size], f"test split ({held_out[1]})")
    n_eval = min(cfg.eval_size, len(train) // 2)
    unit = "reviews" if cfg.task == "imdb" else "prompts"
    return TaskSplit(train[n_eval:], train[:n_eval], f"{n_eval} {unit} held out of {where} (no test split beside it)")


def validate_task_data(cfg: DataConfig) -> None:
    """Read and validate every file the task's prompts come from (for preflights, before any model loads)."""
    task_split(cfg)


def _shuffled_groups(examples: list[dict[str, Any]], seed: int) -> list[list[dict]]:
    groups: dict[str, list[dict]] = {}
    for ex in examples:
        groups.setdefault(ex["group"], []).append(ex)
    ordered = list(groups.values())
    random.Random(f"{seed}:split").shuffle(ordered)
    return ordered


def _pairs_of(groups: list[list[dict]]) -> list[dict[str, str]]:
    return [{"prompt": ex["prompt"], "chosen": ex["chosen"], "rejected": ex["rejected"]}
            for group in groups for ex in group if ex["chosen"] is not None and ex["rejected"] is not None]


def _source_text(example: dict[str, Any], cfg: DataConfig) -> str:
    """The text a generation prompt is cut from: the whole review for IMDb, else the prompt itself."""
    return example["sft_completion"] if cfg.task == "imdb" else example["prompt"]


def _generation_prompt(example: dict[str, Any], cfg: DataConfig, tokenizer) -> str:
    if cfg.task != "imdb":
        return example["prompt"]
    if tokenizer is None:
        raise ValueError("IMDb prompts are the first tokens of a review: generation_prompts needs the model's tokenizer")
    low, high = cfg.prefix_tokens
    k = random.Random(f"{cfg.seed}:prefix:{example['group']}").randint(low, high)
    return formats.token_prefix(example["sft_completion"], tokenizer, k)


def _examples(cfg: DataConfig) -> tuple[list[dict[str, Any]], str]:
    """(every training record of the task as an example, where they were read from)."""
    if cfg.task == "local":
        if not cfg.local_path:
            raise ValueError("data.local_path is required for task 'local'")
        path = Path(cfg.local_path)
        rows = validated(read_rows(path), str(path), adapters.LOCAL_FIELDS, cfg.column_map)
        return [{**_example(r["prompt"], r["chosen"], r["prompt"], r["chosen"], r["chosen"], r["rejected"]),
                 "where": f"{path}:{line_no}"} for line_no, r in rows], str(path)
    name, split = TASK_DATASET[cfg.task]
    records, where = load_source_from(name, cfg.dir, split, builtin_fallback=cfg.builtin_fallback)
    return _task_examples(cfg, records), where


def _task_examples(cfg: DataConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if cfg.task == "imdb":
        low, high = cfg.prefix_tokens
        if not 1 <= low <= high:
            raise ValueError(f"data.prefix_tokens must be (low, high) with 1 <= low <= high, got {cfg.prefix_tokens}")
        # the prompt is cut later, with the model's tokenizer; a review is its own group
        return [{**_example(None, None, "", review), "group": review}
                for review in (formats.clean_imdb_markup(r["text"]) for r in records)]
    if cfg.task == "tldr":
        return [_example(r["prompt"], formats.tldr_summary(r["label"]), r["prompt"], formats.tldr_summary(r["label"]))
                for r in records]
    return [_example(r["prompt"], r["chosen"], r["prompt"], r["chosen"], r["chosen"], r["rejected"]) for r in records]


def _example(prompt, reference, sft_prompt, sft_completion, chosen=None, rejected=None) -> dict[str, Any]:
    return {"prompt": prompt, "reference": reference, "sft_prompt": sft_prompt, "group": prompt,
            "sft_completion": sft_completion, "chosen": chosen, "rejected": rejected}


def _check_n(n: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return n


def _enough(items: list, n: int, what: str) -> list:
    if len(items) < n:
        log.warning("asked for %d %s, only %d available", n, what, len(items))
    return items
