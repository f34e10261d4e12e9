"""The registry of pipeline stages, imported lazily so `alignpipe.stages` stays cheap to import.

Where a stage's work happens, from its name: `STAGE_MODULES[name]` (e.g. dpo ->
alignpipe/stages/dpo_stage.py); its config slice is the StageConfig class at the top of that module.
"""
from __future__ import annotations

import importlib

from alignpipe.stages.base import StageContext, StageSpec

STAGE_ORDER: tuple[str, ...] = ("sft", "pairs", "reference", "dpo", "evaluate", "ood", "report")

# stage -> (module, attribute holding its StageSpec); evaluate and ood are one implementation.
STAGE_MODULES: dict[str, tuple[str, str]] = {
    "sft": ("alignpipe.stages.sft_stage", "SPEC"),
    "pairs": ("alignpipe.stages.pairs_stage", "SPEC"),
    "reference": ("alignpipe.stages.reference_stage", "SPEC"),
    "dpo": ("alignpipe.stages.dpo_stage", "SPEC"),
    "evaluate": ("alignpipe.stages.evaluate_stage", "EVALUATE"),
    "ood": ("alignpipe.stages.evaluate_stage", "OOD"),
    "report": ("alignpipe.stages.report_stage", "SPEC"),
}


def get_stage(name: str) -> StageSpec:
    if name not in STAGE_MODULES:
        raise KeyError(f"unknown stage '{name}' (stages: {', '.join(STAGE_ORDER)})")
    module, attr = STAGE_MODULES[name]
    return getattr(importlib.import_module(module), attr)


def all_stages() -> list[StageSpec]:
    return [get_stage(n) for n in STAGE_ORDER]


__all__ = ["STAGE_MODULES", "STAGE_ORDER", "StageContext", "StageSpec", "get_stage", "all_stages"]
