"""Replication settings: defaults for one broker, a majority in sync on a cluster,
and an impossible combination refused before any topic is created."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.errors import ConfigError
from tierflow.pipeline.kafka.topics import ensure_topics


@pytest.mark.parametrize(("replication", "insync"), [(1, 1), (2, 2), (3, 2), (5, 3)])
def test_min_insync_replicas_defaults_to_a_majority(monkeypatch: pytest.MonkeyPatch, replication: int,
                                                    insync: int) -> None:
    monkeypatch.setenv("TIERFLOW_REPLICATION", str(replication))
    monkeypatch.delenv("TIERFLOW_MIN_INSYNC_REPLICAS", raising=False)
    assert Settings.from_env().insync_replicas == insync


def test_min_insync_replicas_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_REPLICATION", "3")
    monkeypatch.setenv("TIERFLOW_MIN_INSYNC_REPLICAS", "3")
    assert Settings.from_env().insync_replicas == 3


def test_a_replication_of_zero_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_REPLICATION", "0")
    with pytest.raises(ConfigError, match=re.escape("TIERFLOW_REPLICATION=0 is outside 1..16")):
        Settings.from_env()


def test_more_insync_replicas_than_replicas_is_refused_before_creating_topics() -> None:
    settings = replace(Settings(), replication=1, min_insync_replicas=2)
    with pytest.raises(ConfigError, match="no write could succeed"):
        ensure_topics(settings)
