"""`tierflow preview` against a real Redis: a population's state, tiers and tier-triggered
grants built by the real stores; a configuration with lower money thresholds and a lower
`super` threshold is previewed (nothing written), then applied with `tierflow reevaluate`.
The preview's from -> to matrices equal what the re-evaluation actually changed, its
change count the records it wrote, and its reward budget what the engine then spends on
those records."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import orjson
import redis

from tests.fixtures.worker import cli, population_events
from tierflow.pipeline.config.domain import Config, load_config
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.ingest.validate import Limits, ValidEvent, parse_record
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import encode
from tierflow.pipeline.tiering.evaluate import TRACKED
from tierflow.pipeline.tiering.keys import TierKeys
from tierflow.pipeline.tiering.store import TierStore

NEW = """
[tiering.monetary]
thresholds = [100, 300, 800, 1500]

[tiering.membership]
tiers = [{ name = "ordinary", min_points = 0 }, { name = "super", min_points = 600 }]
"""
CHUNK = 500


def fill(client: redis.Redis, config: Config, events: list[dict], now_ms: int) -> list[str]:
    """State, tiers and tier-triggered grants, as the worker builds them; returns the users."""
    limits = Limits.of(config.ingest)
    state = StateStore(client, config.state.retention_days)
    tiers = TierStore(client, config)
    engine = RewardEngine(client, config.rewards)
    valid: list[ValidEvent] = []
    for event in events:
        valid += parse_record(orjson.dumps(event), str(event["user_id"]).encode(), limits, now_ms)[0]
    for start in range(0, len(valid), CHUNK):
        chunk = valid[start:start + CHUNK]
        groups: dict[tuple[str, str], list[list[object]]] = defaultdict(list)
        for offset, item in enumerate(chunk, start):
            groups[(item.event.user_id, "touch:0")].append(encode(item.event, item.ts_ms, offset))
        state.apply(groups)
        engine.on_tier_changes(tiers.on_batch(chunk, now_ms).appended, now_ms)
    tiers.stats.snapshot_means(now_ms)
    engine.on_tier_changes(tiers.sweep(now_ms).appended, now_ms)
    return sorted(state.users())


def stored(client: redis.Redis, users: list[str]) -> dict[str, dict[str, str | None]]:
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.hgetall(TierKeys.of(user).tier)
    return {user: {dim: tier.get(f"v:{dim}") for dim in TRACKED} for user, tier in zip(users, pipe.execute(),
                                                                                         strict=True)}


def test_preview_predicts_what_reevaluate_changes_and_writes_nothing(settings: Settings, tmp_path: Path) -> None:
    config = load_config()
    client = connect(settings.redis_url)
    events, now_ms = population_events(users=300, days=120, seed=83, duplicate_share=0.0)
    users = fill(client, config, events, now_ms)
    path = tmp_path / "new.toml"
    path.write_text(NEW)
    new = load_config(path)

    dump = {key: client.dump(key) for key in client.scan_iter(count=1000)}
    previewed = cli(settings, "preview", "--config", str(path), "--json")
    assert previewed.returncode == 0, previewed.stderr.decode()
    doc = orjson.loads(previewed.stdout)
    assert {key: client.dump(key) for key in client.scan_iter(count=1000)} == dump  # nothing written

    before = stored(client, users)
    spent = RewardEngine(client, new.rewards).report(now_ms)["campaigns"]
    applied = cli(settings, "--config", str(path), "reevaluate")
    assert applied.returncode == 0, applied.stderr.decode()
    after = stored(client, users)

    assert doc["users"] == len(users)
    for dim in TRACKED:
        moved = Counter((before[u][dim], after[u][dim]) for u in users)
        assert {(c["from"], c["to"]): c["users"] for c in doc["moves"][dim]["matrix"]} == dict(moved), dim
        assert doc["moves"][dim]["moved"] == sum(n for (old, new_), n in moved.items() if old != new_)
    assert doc["moves"]["segment"]["moved"] > 0 and doc["moves"]["membership"]["moved"] > 0

    pending = TierStore(client, new).outbox.pending(users)
    changes = [r for records in pending.values() for r in records if r.reason == "config_change"]
    assert doc["changes"] == len(changes)
    engine = RewardEngine(client, new.rewards)
    engine.on_tier_changes(changes, now_ms)
    now = engine.report(now_ms)["campaigns"]
    actual = {cid: c["spent_cents"] - spent[cid]["spent_cents"] for cid, c in now.items()  # type: ignore[attr-defined]
              if c["spent_cents"] != spent[cid]["spent_cents"]}
    predicted = {cid: c["within_budget_cents"] for cid, c in doc["rewards"]["campaigns"].items()
                 if c["within_budget_cents"]}
    assert predicted == actual and actual  # the lower super threshold grants super packs
    assert doc["rewards"]["cost_cents"] == sum(actual.values())


def test_a_preview_of_a_config_that_does_not_validate_is_a_one_line_error(settings: Settings,
                                                                         tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[tiering.monetary]\nthresholds = 'high'\n")
    failed = cli(settings, "preview", "--config", str(path))
    assert failed.returncode == 2
    assert failed.stderr.decode().count("\n") == 1 and "thresholds" in failed.stderr.decode()
