"""Turn a preset name or YAML file plus `--set a.b=value` overrides into a validated PipelineConfig.

Layers, later ones winning: the schema's defaults, the preset a file `extends`, the preset or file
itself, `--set` overrides, then the environment for the one value it may supply (ALIGNPIPE_DATA_DIR
for data.dir when nothing else set it). The environment is read here, at the edge, and nowhere
else: what a stage reads is in the config, so its cache key covers it. `explain_config` says which
layer each value came from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import BaseModel, ValidationError

from pipeline_config.reads import not_counted
from pipeline_config.schema import PipelineConfig

PRESET_DIR = Path(__file__).parent / "presets"
DATA_DIR_ENV = "ALIGNPIPE_DATA_DIR"


class ConfigError(ValueError):
    """A one-line, user-facing configuration error naming the file, field or option."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}: empty key segment")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', value); YAML gives numbers, bools, null and lists their natural types."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. dpo.beta=0.5")
    key, raw = item.split("=", 1)
    raw = raw.strip()
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: value is not valid YAML ({' '.join(str(e).split())})") from None
    return key.strip(), value


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


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterable[str]:
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


@dataclass(frozen=True)
class Layer:
    name: str  # "preset demo", "file my.yaml", "--set", "env ALIGNPIPE_DATA_DIR"
    tree: dict[str, Any]


def _layers(preset: Optional[str], path: Optional[str | Path], overrides: Iterable[str]) -> tuple[str, list[Layer]]:
    if path is not None:
        source, own, own_name = str(path), _read_yaml(Path(path)), f"file {path}"
    else:
        preset = preset or "demo"
        file = PRESET_DIR / f"{preset}.yaml"
        if not file.exists():
            raise ConfigError(f"--preset {preset}: unknown preset (choose from {', '.join(preset_names())})")
        source, own, own_name = str(file), _read_yaml(file), f"preset {preset}"
    layers = []
    parent = own.pop("extends", None)
    if parent:  # `extends: other_preset` lets a file or preset start from a preset
        pfile = PRESET_DIR / f"{parent}.yaml"
        if not pfile.exists():
            raise ConfigError(f"{source}: extends: unknown preset '{parent}' (choose from {', '.join(preset_names())})")
        ptree = _read_yaml(pfile)
        ptree.pop("extends", None)
        layers.append(Layer(f"preset {parent}", ptree))
    layers.append(Layer(own_name, own))
    sets: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        _set_path(sets, key, value)
    if sets:
        layers.append(Layer("--set", sets))
        source = f"{source} + --set"
    merged = {}
    for layer in layers:
        merged = _merge(merged, layer.tree)
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir and (merged.get("data") or {}).get("dir") in (None, ""):
        layers.append(Layer(f"env {DATA_DIR_ENV}", {"data": {"dir": env_dir}}))
    return source, layers


def load_config(
    preset: Optional[str] = "demo",
    path: Optional[str | Path] = None,
    overrides: Iterable[str] = (),
) -> PipelineConfig:
    """Preset (or explicit YAML file), then overrides, then the environment, then validation.
    Raises ConfigError."""
    source, layers = _layers(preset, path, overrides)
    tree: dict[str, Any] = {}
    for layer in layers:
        tree = _merge(tree, layer.tree)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(source, e)) from None


@dataclass(frozen=True)
class ConfigEntry:
    path: str  # dotted, e.g. "dpo.beta"
    value: Any
    source: str  # "default" or the layer that set it last


def explain_config(
    preset: Optional[str] = "demo", path: Optional[str | Path] = None, overrides: Iterable[str] = ()
) -> tuple[PipelineConfig, list[ConfigEntry]]:
    """The validated config and, for every leaf value, where it came from."""
    cfg = load_config(preset, path, overrides)
    _, layers = _layers(preset, path, overrides)
    set_by: dict[str, str] = {}
    for layer in layers:
        for leaf in _leaves(layer.tree):
            for known in list(set_by):  # a later layer replacing a whole section owns its leaves
                if known.startswith(leaf + "."):
                    del set_by[known]
            set_by[leaf] = layer.name
    entries = []
    with not_counted():
        leaves = list(_config_leaves(cfg))
    for leaf, value in leaves:
        owner = next((set_by[p] for p in _prefixes(leaf) if p in set_by), "default")
        entries.append(ConfigEntry(leaf, value, owner))
    return cfg, entries


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _config_leaves(model: BaseModel, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _config_leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value
