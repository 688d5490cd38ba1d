"""Domain configuration: one TOML file (``--config`` or ``TIERFLOW_CONFIG``).

Every section has documented defaults (``pipeline/defaults/*.toml``, one file
per capability); a user file only needs the keys it changes. Unknown keys and wrong types are errors with
the offending path, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec

from tierflow.pipeline.archive.config import ArchiveConfig
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.tiering.config import TieringConfig

DEFAULTS_DIR = Path(__file__).with_name("defaults")


class ConfigError(ValueError):
    """The configuration file is missing, malformed or inconsistent."""


class StateConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Rolling windows for frequency and monetary, in calendar days.
    windows_days: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=3650)]], msgspec.Meta(min_length=1)]
    # Day buckets older than this many days before a user's newest event are pruned
    # (by event time, so backfills keep working). Must cover the longest window.
    retention_days: Annotated[int, msgspec.Meta(ge=1)]


class IngestConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_record_bytes: Annotated[int, msgspec.Meta(ge=256)]
    max_batch_events: Annotated[int, msgspec.Meta(ge=1)]
    # Events before this instant, or further than max_future_seconds past the
    # wall clock, are rejected as ts_out_of_range.
    min_ts: datetime
    max_future_seconds: Annotated[int, msgspec.Meta(ge=0)]
    # Consumer batching: whichever limit is reached first closes a batch.
    batch_max_records: Annotated[int, msgspec.Meta(ge=1)]
    batch_max_ms: Annotated[int, msgspec.Meta(ge=1)]


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    state: StateConfig
    ingest: IngestConfig
    archive: ArchiveConfig
    rewards: RewardsConfig
    tiering: TieringConfig

    @property
    def min_ts_ms(self) -> int:
        ts = self.ingest.min_ts
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return int(ts.timestamp() * 1000)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def load_config(path: Path | None = None) -> Config:
    """Defaults, overlaid with the user's file when given."""
    data: dict[str, Any] = {}
    for default in sorted(DEFAULTS_DIR.glob("*.toml")):
        data = _merge(data, _read_toml(default))
    if path is not None:
        data = _merge(data, _read_toml(path))
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path or DEFAULTS_DIR}: {exc}") from exc
    if config.state.retention_days < max(config.state.windows_days):
        raise ConfigError("state.retention_days must be at least the longest of state.windows_days")
    return config
