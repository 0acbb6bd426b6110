"""What a run config may not ask that only the algorithms and the model families know (the schema
in config.py knows neither): checked right after the schema, before any work, and reported the
same way, with the dotted key."""

from __future__ import annotations

from pathlib import Path

from fedumm.config import ConfigError, RunConfig, load_config
from fedumm.federation.strategies import config_problems as strategy_problems
from fedumm.models import config_problems as model_problems


def check(cfg: RunConfig, source: str) -> RunConfig:
    """`cfg`, or a ConfigError naming `source` and each key the algorithm or model refuses."""
    problems = [*strategy_problems(cfg), *model_problems(cfg.model)]
    if problems:
        lines = [f"invalid config {source}:", *(f"  {key}: {why}" for key, why in problems)]
        raise ConfigError("\n".join(lines))
    return cfg


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """A run config from YAML (defaults when `path` is None) and `--set` overrides, checked by
    the schema, then by the algorithm and the model family it names."""
    return check(load_config(path, overrides), str(path) if path is not None else "(defaults)")
