"""Datasets for the pipeline: validated readers per dataset (`adapters`) and the task-level builders
the stages call (`tasks`). `datasets` is imported only when a hub dataset is actually loaded."""
from alignpipe.data.records import FieldSpec, RecordError, read_records
from alignpipe.data.sources import DATA_DIR_ENV, DATASET_NAMES, SourceUnavailable, resolve_data_dir
from alignpipe.data.tasks import generation_prompts, human_pairs, load_source, ood_articles, sft_examples

__all__ = [
    "DATA_DIR_ENV",
    "DATASET_NAMES",
    "FieldSpec",
    "RecordError",
    "SourceUnavailable",
    "generation_prompts",
    "human_pairs",
    "load_source",
    "ood_articles",
    "read_records",
    "resolve_data_dir",
    "sft_examples",
]
