"""The registry of pipeline stages, imported lazily so `alignpipe.stages` stays cheap to import."""
from __future__ import annotations

import importlib

from alignpipe.stages.base import StageContext, StageSpec

STAGE_ORDER: tuple[str, ...] = ("sft", "pairs", "reference", "dpo", "evaluate", "ood", "report")

_MODULES = {name: f"alignpipe.stages.{name}_stage" for name in STAGE_ORDER}


def get_stage(name: str) -> StageSpec:
    if name not in _MODULES:
        raise KeyError(f"unknown stage '{name}' (stages: {', '.join(STAGE_ORDER)})")
    return importlib.import_module(_MODULES[name]).SPEC


def all_stages() -> list[StageSpec]:
    return [get_stage(n) for n in STAGE_ORDER]


__all__ = ["STAGE_ORDER", "StageContext", "StageSpec", "get_stage", "all_stages"]
