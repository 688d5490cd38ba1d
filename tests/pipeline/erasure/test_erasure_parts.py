"""The pure parts of an erasure: a customer's share of the population counts, the key
pattern of their hash tag, the marks of an erasure record, and the anonymous fold of their
reward records into the campaigns' totals; and the key pattern against a real Redis."""

from __future__ import annotations

import redis

from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.erasure.replay import ErasedSpend
from tierflow.pipeline.erasure.store import Contribution, ErasureStore, contribution, user_pattern
from tierflow.pipeline.rewards.restore import LedgerFold
from tierflow.pipeline.state.store import connect
from tierflow.pipeline.state.summary import UserKeys
from tierflow.pipeline.tiering.keys import TierKeys
from tierflow.schemas.erasures import Erasure
from tierflow.schemas.reward_grants import RewardRecord

TIER = {"v:segment": "important_value", "v:lifecycle": "repeat", "s:r": "5", "s:f": "3", "s:m": "4", "dseq": "7"}


def test_a_customer_the_population_never_counted_contributes_nothing() -> None:
    assert contribution(TIER, [], None) == Contribution()


def test_the_contribution_is_the_stored_tiers_when_every_delta_was_applied() -> None:
    stale = {"seq": 7, "dims": {"segment": ["general_value", "important_value"]}, "scores": {}}
    part = contribution(TIER, [stale], 7)  # an applied delta not yet cleared changes nothing
    assert part == Contribution(True, {"segment": "important_value", "lifecycle": "repeat"},
                                {"r": 5, "f": 3, "m": 4})


def test_deltas_the_shard_has_not_applied_are_taken_back_newest_first() -> None:
    pending = [
        {"seq": 6, "dims": {"segment": [None, "general_value"], "lifecycle": ["new", "repeat"]},
         "scores": {"r": [None, 4], "f": [None, 3], "m": [None, 4]}},
        {"seq": 7, "dims": {"segment": ["general_value", "important_value"]}, "scores": {"r": [4, 5]}},
    ]
    # The shard applied up to 5: it counts the customer as new, with no segment or scores.
    assert contribution(TIER, pending, 5) == Contribution(True, {"lifecycle": "new"}, {})
    assert contribution(TIER, pending, 6) == Contribution(
        True, {"segment": "general_value", "lifecycle": "repeat"}, {"r": 4, "f": 3, "m": 4})


def test_the_key_pattern_escapes_glob_characters() -> None:
    assert user_pattern("c000001") == "{u:c000001}*"
    assert user_pattern("a*b?[c]\\") == "{u:a\\*b\\?\\[c\\]\\\\}*"


def test_records_below_the_marks_are_the_erased_customers() -> None:
    erasure = Erasure(user_id="c1", erasure_id="e1", erased_at="2026-12-01T00:00:00Z",
                      marks={"touch.purchase:0": 10, "tier.changes:2": 3})
    assert erasure.skips("touch.purchase", 0, 9)
    assert not erasure.skips("touch.purchase", 0, 10)
    assert not erasure.skips("touch.purchase", 1, 0)  # a partition added later: after the erasure
    assert erasure.skips("tier.changes", 2, 0)


def test_an_erased_customers_grants_stay_in_the_campaign_totals_only() -> None:
    config = load_config()
    fold = LedgerFold(config.rewards)
    key = '["super_upgrade","c1","tier:membership:v1"]'
    grant = RewardRecord(record_id=f"grant:{key}", kind="grant", user_id="c1", at_ms=1, recorded_ms=1, items=[],
                         cost_cents=1500, campaign="vip_upgrade", rule="super_upgrade", prize="super_pack",
                         idempotency_key=key)
    spend = ErasedSpend(fold)
    spend.add(grant)
    spend.add(grant)  # the same record twice counts once
    spend.finish()
    assert fold.campaigns["vip_upgrade"].spent == 1500
    assert fold.campaigns["vip_upgrade"].reservations == {}
    assert dict(fold.users) == {}


def test_the_erasure_finds_every_key_of_the_customer_and_no_one_elses(redis_url: str) -> None:
    client: redis.Redis = connect(redis_url)
    odd, plain = "a*b", "ab"
    for user in (odd, plain, "a*bc"):
        client.hset(UserKeys.of(user).profile, "n", 1)
        client.hset(TierKeys.of(user).tier, "asof", 1)
    store = ErasureStore(client, load_config(), lanes=4)
    assert sorted(store.user_keys(odd)) == sorted([UserKeys.of(odd).profile, TierKeys.of(odd).tier])
    store.erase(odd)
    assert store.user_keys(odd) == [] and len(store.user_keys(plain)) == 2 and len(store.user_keys("a*bc")) == 2
