"""The Redis namespace a deployment's keys carry (pure: the environment in, a string out)."""

from __future__ import annotations

import pytest

from tierflow.pipeline.config.settings import redis_namespace_from_env
from tierflow.pipeline.errors import ConfigError


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("TIERFLOW_REDIS_NAMESPACE", raising=False)
    monkeypatch.delenv("TIERFLOW_TOPIC_PREFIX", raising=False)
    return monkeypatch


def test_no_topic_prefix_keeps_the_keys_a_deployment_always_had(env: pytest.MonkeyPatch) -> None:
    assert redis_namespace_from_env() == ""


def test_the_topic_prefix_is_the_default(env: pytest.MonkeyPatch) -> None:
    env.setenv("TIERFLOW_TOPIC_PREFIX", "acme.")
    assert redis_namespace_from_env() == "acme."


def test_an_explicit_namespace_wins_even_empty(env: pytest.MonkeyPatch) -> None:
    env.setenv("TIERFLOW_TOPIC_PREFIX", "acme.")
    env.setenv("TIERFLOW_REDIS_NAMESPACE", "shop-7:")
    assert redis_namespace_from_env() == "shop-7:"
    env.setenv("TIERFLOW_REDIS_NAMESPACE", "")
    assert redis_namespace_from_env() == ""


@pytest.mark.parametrize("bad", ["a{b}", "x*", "sp ace"])
def test_braces_and_glob_characters_are_refused(env: pytest.MonkeyPatch, bad: str) -> None:
    # Braces would move the keys' hash tags; glob characters would widen SCAN patterns.
    env.setenv("TIERFLOW_REDIS_NAMESPACE", bad)
    with pytest.raises(ConfigError, match="TIERFLOW_REDIS_NAMESPACE"):
        redis_namespace_from_env()
