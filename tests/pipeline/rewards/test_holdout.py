"""Holdouts: a campaign's control group is chosen deterministically by a hash of
(campaign, user), at close to the configured share; a held-out customer receives
nothing (no grant, no claim, no budget) and both arms are recorded once per
campaign, also after replays and a rebuild of the ledger."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.worker import read_all, running_worker, send_events, wait_processed
from tests.pipeline.rewards.test_ledger import NOW, buy, campaign_hash, engine_for, upgrade, validate_outbox
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.preview.moves import Budget
from tierflow.pipeline.rewards import holdout, restore
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.ledger import CampaignKeys
from tierflow.pipeline.state.store import connect
from tierflow.schemas.tier_changes import TierChange

USERS = [f"u{n}" for n in range(400)]


def config_with(holdout_percent: float, **campaign: Any) -> RewardsConfig:
    return msgspec.convert({
        "shop": "shop1", "point_value_cents": 1, "withdraw_min_cents": 1000,
        "prizes": {"seven": {"type": "coupon", "off_cents": 700, "validity": {"days": 7}, "issuer": "platform"},
                   "code7": {"type": "universal_code", "code": "HELLO7", "count": 1000, "coupon": "seven"}},
        "campaigns": {"c": {"budget_cents": 1_000_000, "holdout_percent": holdout_percent, **campaign}},
        "rules": {"buy": {"campaign": "c", "prize": "seven", "trigger": {"on": "event", "event": "purchase"}},
                  "code": {"campaign": "c", "prize": "code7", "trigger": {"on": "code", "code": "HELLO7"}}},
    }, RewardsConfig)


# --- the split: pure ----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(percent=st.floats(min_value=0, max_value=60), campaign=st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True),
       salt=st.text(min_size=0, max_size=6))
def test_the_split_is_deterministic_and_close_to_the_share(percent: float, campaign: str, salt: str) -> None:
    users = [f"{salt}user-{n}" for n in range(4000)]
    arms = [holdout.arm(campaign, user, percent) for user in users]
    assert arms == [holdout.arm(campaign, user, percent) for user in users]  # same answer every time
    share = arms.count("control") / len(users)
    # Binomial standard error at n = 4000 is at most 0.8 points: 4 of them is a generous bound.
    assert abs(share - percent / 100) < 0.032


@given(user=st.text(min_size=1, max_size=20), low=st.floats(0, 99.99), high=st.floats(0, 99.99))
def test_raising_the_share_only_moves_treated_customers_to_control(user: str, low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert holdout.arm("c", user, low) == "treated" or holdout.arm("c", user, high) == "control"


def test_each_campaign_draws_its_own_control_group() -> None:
    a = {u for u in USERS if holdout.arm("spring", u, 20) == "control"}
    b = {u for u in USERS if holdout.arm("summer", u, 20) == "control"}
    assert a and b and a != b


def test_a_share_outside_0_to_100_is_refused() -> None:
    for bad in (-1, 100):
        with pytest.raises(ValueError, match="campaign 'c': holdout_percent must be at least 0 and below 100"):
            config_with(bad)


# --- the engine against real Redis -------------------------------------------------------


def test_held_out_customers_get_nothing_and_spend_no_budget(redis_url: str) -> None:
    config = config_with(25)
    engine = engine_for(redis_url, config)
    control = {u for u in USERS if holdout.arm("c", u, 25) == "control"}
    engine.on_events([(buy(u), NOW) for u in USERS], NOW)
    records = validate_outbox(engine)
    granted = {r.user_id for r in records if r.kind == "grant"}
    assert granted == set(USERS) - control
    assert int(campaign_hash(redis_url, "c")["spent"]) == 700 * len(granted)
    arms = {r.user_id: r.reason for r in records if r.kind == "assignment"}
    assert arms == {u: "control" if u in control else "treated" for u in USERS}
    assert all(engine.wallet(u, NOW)["coupons"] == [] for u in control)


def test_each_customer_is_assigned_once_whatever_the_replays(redis_url: str) -> None:
    engine = engine_for(redis_url, config_with(50))
    engine.on_events([(buy(u, 0), NOW) for u in USERS[:50]], NOW)
    engine.on_events([(buy(u, 0), NOW) for u in USERS[:50]], NOW + 1)  # a replay
    engine.on_events([(buy(u, 1), NOW + 5) for u in USERS[:50]], NOW + 5)  # later purchases
    assignments = [r for r in validate_outbox(engine) if r.kind == "assignment"]
    assert sorted(r.user_id for r in assignments) == sorted(USERS[:50])
    assert {r.at_ms for r in assignments} == {NOW}  # the trigger that first put them in


def test_a_held_out_customer_claiming_a_code_gets_nothing(redis_url: str) -> None:
    engine = engine_for(redis_url, config_with(50))
    held = next(u for u in USERS if holdout.arm("c", u, 50) == "control")
    treated = next(u for u in USERS if holdout.arm("c", u, 50) == "treated")
    assert engine.claim_code("hello7", held, NOW).status == "held_out"
    assert engine.claim_code("hello7", held, NOW).status == "held_out"
    assert engine.claim_code("hello7", treated, NOW).status == "granted"
    assert int(campaign_hash(redis_url, "c")["spent"]) == 700
    kinds = sorted((r.user_id, r.kind, r.reason) for r in validate_outbox(engine))
    assert kinds == sorted([(held, "assignment", "control"), (treated, "assignment", "treated"),
                            (treated, "grant", None)])


def test_without_a_holdout_nothing_is_assigned(redis_url: str) -> None:
    engine = engine_for(redis_url, config_with(0))
    engine.on_events([(buy(u), NOW) for u in USERS[:20]], NOW)
    assert {r.kind for r in validate_outbox(engine)} == {"grant"}


def test_a_rebuilt_ledger_does_not_assign_again(redis_url: str) -> None:
    config = config_with(30)
    engine = engine_for(redis_url, config)
    engine.on_events([(buy(u), NOW) for u in USERS[:40]], NOW)
    records = validate_outbox(engine)
    redis.Redis.from_url(redis_url).flushdb()
    fold = restore.LedgerFold(config)
    for record in records:
        fold.add(record)
    restore.write(engine.ledger.client, fold, fold.users)
    restore.write_campaigns(engine.ledger.client, fold)
    engine.on_events([(buy(u), NOW) for u in USERS[:40]], NOW + 1)  # replayed after the rebuild
    engine.on_events([(buy(u, 1), NOW + 2) for u in USERS[:40]], NOW + 2)  # new purchases: per_user 1
    assert validate_outbox(engine) == []  # no second arm, and the per-user limit holds


# --- the worker --------------------------------------------------------------------------


@pytest.mark.service
def test_the_worker_grants_nothing_to_held_out_customers(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "holdout.toml"
    config.write_text("[rewards.campaigns.first_purchase]\nholdout_percent = 40\n")
    settings = replace(settings, config_path=config)
    users = [f"w{n}" for n in range(60)]
    control = {u for u in users if holdout.arm("first_purchase", u, 40) == "control"}
    assert 10 < len(control) < 40
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    events = [{"event_id": f"{u}-p", "type": "purchase", "user_id": u, "ts": ts, "channel": "app",
               "order_id": f"{u}-o", "amount": 9.9, "currency": "CNY",
               "items": [{"sku": "S1", "category": "snacks", "qty": 1, "price": 9.9}]} for u in users]
    with running_worker(settings, tmp_path) as worker:
        send_events(settings, events + events[:20])  # some delivered twice
        wait_processed(settings, worker)
        # Assignments and grants of the campaign: one arm per customer, points for the treated only.
        records = [r for r in read_all(settings, settings.topics.reward_grants, expected=2 * len(users) - len(control))
                   if r.get("campaign") == "first_purchase"]
    arms = {r["user_id"]: r["reason"] for r in records if r["kind"] == "assignment"}
    assert arms == {u: "control" if u in control else "treated" for u in users}
    assert sum(1 for r in records if r["kind"] == "assignment") == len(users)
    grants = [r["user_id"] for r in records if r["kind"] == "grant"]
    assert sorted(grants) == sorted(set(users) - control)
    spent = connect(settings.redis_url).hget(CampaignKeys.of("first_purchase").hash, "spent")
    assert int(spent or 0) == 500 * len(grants)  # 500 points at 0.01: nothing reserved for the held out


def test_preview_counts_no_spend_for_held_out_customers() -> None:
    config = config_with(50, budget_cents=None)
    tier_rule = {"campaign": "c", "prize": "seven",
                 "trigger": {"on": "tier", "dimension": "membership", "entered": "super"}}
    doc = msgspec.to_builtins(config)
    doc["rules"] = {"up": tier_rule}
    rewards = msgspec.convert(doc, RewardsConfig)
    budget = Budget()
    for user in USERS:
        budget.add(rewards, msgspec.convert({**upgrade(user), "user_id": user}, TierChange), {})
    treated = [u for u in USERS if holdout.arm("c", u, 50) == "treated"]
    assert budget.campaigns["c"].grants == len(treated)
    assert budget.campaigns["c"].cost_cents == 700 * len(treated)
