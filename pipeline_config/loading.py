"""Turn a preset name or YAML file plus `--set a.b=value` overrides into a validated PipelineConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import ValidationError

from pipeline_config.schema import PipelineConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A one-line, user-facing configuration error naming the file, field or option."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _set_path(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = child
    # YAML parsing gives numbers, bools, null and lists their natural types.
    node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {where}: {msg}{more}"


def load_config(
    preset: Optional[str] = "demo",
    path: Optional[str | Path] = None,
    overrides: Iterable[str] = (),
) -> PipelineConfig:
    """Preset (or explicit YAML file), then overrides, then validation. Raises ConfigError."""
    if path is not None:
        source = str(path)
        tree = _read_yaml(Path(path))
    else:
        preset = preset or "demo"
        file = PRESET_DIR / f"{preset}.yaml"
        if not file.exists():
            raise ConfigError(f"--preset {preset}: unknown preset (choose from {', '.join(preset_names())})")
        source = str(file)
        tree = _read_yaml(file)
    # `extends: other_preset` lets a preset start from another one.
    parent = tree.pop("extends", None)
    if parent:
        ptree = _read_yaml(PRESET_DIR / f"{parent}.yaml")
        ptree.pop("extends", None)
        tree = _merge(ptree, tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. dpo.beta=0.5")
        key, raw = item.split("=", 1)
        _set_path(tree, key.strip(), raw.strip())
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(source if not overrides else f"{source} + --set", e)) from None
