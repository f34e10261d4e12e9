"""Pipeline configuration: pydantic schema plus YAML presets, validated at the edge."""
from pipeline_config.schema import PipelineConfig
from pipeline_config.loading import ConfigError, load_config, preset_names

__all__ = ["PipelineConfig", "ConfigError", "load_config", "preset_names"]
