"""Domain configuration: one TOML file (``--config`` or ``TIERFLOW_CONFIG``).

Every section has documented defaults (``pipeline/config/defaults/*.toml``, one
file per capability) and its type lives in the stage package that reads it
(``tierflow.pipeline.tiering.config`` for ``[tiering]``, ...); this module only
assembles them. A user file only needs the keys it changes. Unknown keys and
wrong types are errors with the offending path, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec

from tierflow.pipeline.archive.config import ArchiveConfig
from tierflow.pipeline.dashboard.config import DashboardConfig
from tierflow.pipeline.errors import ConfigError
from tierflow.pipeline.ingest.config import IngestConfig
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.state.config import StateConfig
from tierflow.pipeline.tiering.config import TieringConfig

DEFAULTS_DIR = Path(__file__).with_name("defaults")


class WorkerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The `[worker]` section: how the runtime batches, retries and recovers."""

    # Delays before restarting a failed ingest loop or archive writer; the last one repeats.
    restart_backoff_s: Annotated[list[Annotated[float, msgspec.Meta(gt=0)]], msgspec.Meta(min_length=1)]
    # Users whose waiting records one lane publishes per transaction; also the page
    # size of the walk over every waiting record (outbox_sweep_ms).
    outbox_batch: Annotated[int, msgspec.Meta(ge=1)]
    # How often each worker walks one page of the outbox indexes, pointing lane owners
    # at records written outside their process (the CLI, a crashed worker).
    outbox_sweep_ms: Annotated[int, msgspec.Meta(ge=1)]
    # Each lane owner publishes at most this often: one transaction per lane carries what
    # the ingest batches wrote meanwhile. Adds up to this much latency to the output topics.
    publish_interval_ms: Annotated[int, msgspec.Meta(ge=0)]
    # Users whose output lane the publisher remembers (lanes never change); past this many
    # it starts over, which bounds its memory (about 100 bytes a user).
    lane_cache_users: Annotated[int, msgspec.Meta(ge=1)]
    # A batch's customers are evaluated in slices of this many, two slices at a time, so
    # one is evaluated while Redis reads or commits the other.
    tier_slice_users: Annotated[int, msgspec.Meta(ge=1)]
    # Users whose applied population deltas the tier stage remembers until their next
    # commit clears them (about 100 bytes a user); past this many the oldest cost a call.
    tier_clears_users: Annotated[int, msgspec.Meta(ge=0)]
    # Users whose points lots are expired per timer tick.
    points_expiry_users: Annotated[int, msgspec.Meta(ge=1)]
    # A worker that stops answering the group (killed, hung) loses its input partitions
    # and output lanes after this long; the broker accepts 6000..1800000 by default.
    session_timeout_ms: Annotated[int, msgspec.Meta(ge=1)]
    # Longest wait for the broker to acknowledge published records before a batch fails.
    delivery_timeout_s: Annotated[float, msgspec.Meta(gt=0)]
    # How long a stopping worker waits for its ingest loop and archive writer to finish a batch.
    stop_timeout_s: Annotated[float, msgspec.Meta(gt=0)]
    # How long a stopping consumer serves a rebalance under way before it closes.
    leave_wait_s: Annotated[float, msgspec.Meta(ge=0)]
    # How often the worker measures its group's consumer lag for /metrics.
    lag_interval_s: Annotated[float, msgspec.Meta(gt=0)]
    # How long /healthz waits for each service (Kafka, Redis, the archive) to answer.
    health_timeout_s: Annotated[float, msgspec.Meta(gt=0)]
    # A log line repeated within this long (numbers aside) is held back and counted.
    log_repeats_s: Annotated[float, msgspec.Meta(ge=0)]

    @property
    def heartbeat_ms(self) -> int:
        """Kafka's rule: a member sends about three heartbeats per session timeout."""
        return self.session_timeout_ms // 3


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    state: StateConfig
    ingest: IngestConfig
    archive: ArchiveConfig
    rewards: RewardsConfig
    tiering: TieringConfig
    worker: WorkerConfig
    dashboard: DashboardConfig



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
