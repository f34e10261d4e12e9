"""Datasets for the pipeline: validated readers per dataset (`adapters`) and the task-level builders
the stages call (`tasks`). `datasets` is imported only when a hub dataset is actually loaded."""
from alignpipe.data.records import FieldSpec, RecordError, read_records
from alignpipe.data.sources import DATASET_NAMES, SourceUnavailable, resolve_data_dir
from alignpipe.data.tasks import (
    describe_source,
    generation_prompts,
    human_label_pairs,
    human_pairs,
    load_source,
    ood_articles,
    ood_prompts,
    sft_examples,
    task_split,
    validate_task_data,
)

__all__ = [
    "DATASET_NAMES",
    "FieldSpec",
    "RecordError",
    "SourceUnavailable",
    "describe_source",
    "generation_prompts",
    "human_label_pairs",
    "human_pairs",
    "load_source",
    "ood_articles",
    "ood_prompts",
    "read_records",
    "resolve_data_dir",
    "sft_examples",
    "task_split",
    "validate_task_data",
]
