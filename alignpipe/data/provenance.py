"""Where a dataset's records actually come from, for the record (MLflow run inputs, reports)."""
from __future__ import annotations

from pathlib import Path

from alignpipe.data.builtin import BUILTIN_FILES, builtin_path
from alignpipe.data.sources import EVAL_SPLITS, HUB_DATASETS, SourceUnavailable, data_dir_file, hub_offline, resolve_data_dir
from pipeline_config.schema import DataConfig

# The dataset behind each task's SFT data and prompts, and behind its human preference pairs.
TASK_SOURCE = {"imdb": "imdb", "tldr": "tldr", "hh": "hh_rlhf", "ultrafeedback": "ultrafeedback"}
PAIRS_SOURCE = {"tldr": "tldr_comparisons", "hh": "hh_rlhf", "ultrafeedback": "ultrafeedback"}


def dataset_source(cfg: DataConfig, name: str) -> tuple[str, str]:
    """(source, source_type): the file read (local) or the hub repo id (hub), by the same rules the
    loaders follow: data.local_path, else data.dir, else the hub, else the built-in set."""
    if cfg.task == "local":
        return str(Path(cfg.local_path).resolve()), "local"
    data_dir = resolve_data_dir(cfg.dir)
    if data_dir is not None:
        return str(data_dir_file(data_dir, name).resolve()), "local"
    if hub_offline() and cfg.builtin_fallback and name in BUILTIN_FILES:
        return str(builtin_path(name)), "local"
    return HUB_DATASETS[name], "hub"


def task_dataset(cfg: DataConfig) -> str:
    return "local" if cfg.task == "local" else TASK_SOURCE[cfg.task]


def source_of(cfg: DataConfig, name: str) -> tuple[str, str]:
    return (str(Path(cfg.local_path).resolve()), "local") if name == "local" else dataset_source(cfg, name)


def eval_source_of(cfg: DataConfig) -> tuple[str, str]:
    """(source, source_type) of the evaluation prompts: the task's held-out split where it has one
    (`<name>.test.jsonl` in the data dir, or the hub's split), else the file the training data is from."""
    name = task_dataset(cfg)
    split = EVAL_SPLITS.get(name)
    data_dir = resolve_data_dir(cfg.dir) if name != "local" else None
    if split is not None and data_dir is not None:
        try:
            return str(data_dir_file(data_dir, name, split).resolve()), "local"
        except SourceUnavailable:
            pass
    source, kind = source_of(cfg, name)
    return (f"{source}#{split}" if kind == "hub" and split else source), kind
