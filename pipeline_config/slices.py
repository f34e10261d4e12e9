"""A stage's own slice of the pipeline config: the only config a stage ever sees, and all of its key.

Each stage declares its slice as a pydantic model whose fields say where in PipelineConfig they
come from:

    class DPOSlice(StageConfig):
        dpo: Annotated[DPOConfig, From("dpo")]
        chat_template: Annotated[bool, From("model.chat_template")]

`DPOSlice.of(cfg)` builds it; the stage's cache key is the canonical JSON of that object, so the
key covers exactly what the stage can read, by construction. `sources()` maps the slice back to
config paths, which is how `alignpipe config` says which stages key on a value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import BaseModel

from pipeline_config.reads import not_counted
from pipeline_config.schema import PipelineConfig, Strict


@dataclass(frozen=True)
class From:
    """Field metadata: the dotted PipelineConfig path this slice field is read from."""

    path: str


def config_value(cfg: BaseModel, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


class StageConfig(Strict):
    """Base of every stage slice. Fields must carry From(...) metadata."""

    @classmethod
    def sources(cls) -> dict[str, str]:
        """slice field -> PipelineConfig path."""
        out = {}
        for name, field in cls.model_fields.items():
            marks = [m for m in field.metadata if isinstance(m, From)]
            if len(marks) != 1:
                raise TypeError(f"{cls.__name__}.{name}: a stage slice field needs exactly one From(...) annotation")
            out[name] = marks[0].path
        return out

    @classmethod
    def of(cls, cfg: PipelineConfig) -> "StageConfig":
        with not_counted():  # copying values into the slice is not using them; the stage reading it is
            return cls.model_validate({name: config_value(cfg, path) for name, path in cls.sources().items()})

    @classmethod
    def keys_on(cls, path: str) -> bool:
        """Whether this slice reads the config value at `path` (or a section containing it, or inside it)."""
        return any(path == src or path.startswith(src + ".") or src.startswith(path + ".") for src in cls.sources().values())


def slice_json(config: StageConfig) -> Mapping[str, Any]:
    return config.model_dump(mode="json")
