"""The reward engine's pure core: configuration checks, rule matching, the
catalogue, coupon applicability, and the reward.grants contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures.paths import ROOT
from tierflow.pipeline.config.domain import ConfigError, load_config
from tierflow.pipeline.rewards import catalogue, redeem, rules
from tierflow.pipeline.rewards.catalogue import DAY_MS, IssueContext
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.wallet import RewardError, plan_consume
from tierflow.schemas.events import Browse, Interaction, Item, Purchase
from tierflow.schemas.reward_grants import CouponTerms, RewardItem, RewardRecord, encode
from tierflow.schemas.tier_changes import TierChange

T0 = int(datetime(2026, 4, 23, 12, tzinfo=UTC).timestamp() * 1000)


def base(**overrides: Any) -> dict[str, Any]:
    """A small valid [rewards] section as plain data; tests break one thing at a time."""
    doc: dict[str, Any] = {
        "shop": "shop1",
        "point_value_cents": 1,
        "withdraw_min_cents": 1000,
        "prizes": {
            "five_off": {"type": "coupon", "off_cents": 500, "validity": {"days": 7}},
            "pts": {"type": "points", "points": 100, "expires_days": 30},
            "bag": {"type": "physical", "sku": "BAG", "unit_cost_cents": 900, "stock": 2},
            "pack": {"type": "gift_pack", "items": ["five_off", "bag"]},
            "grow": {"type": "referral_coupon", "validity": {"days": 30},
                     "steps": [{"invites": 1, "off_cents": 100}, {"invites": 3, "off_cents": 300}]},
        },
        "campaigns": {"c1": {"budget_cents": 10_000}, "c2": {}},
        "rules": {
            "r_pack": {"campaign": "c1", "prize": "pack",
                       "trigger": {"on": "tier", "dimension": "membership", "entered": "super"}},
            "r_grow": {"campaign": "c2", "prize": "grow",
                       "trigger": {"on": "event", "event": "interaction", "kind": "referral_accept"}},
        },
    }
    for key, value in overrides.items():
        doc[key] = value
    return doc


def config_of(doc: dict[str, Any]) -> RewardsConfig:
    return msgspec.convert(doc, RewardsConfig)


def errors_of(doc: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        config_of(doc)
    return str(info.value)


# --- configuration ----------------------------------------------------------


def test_base_config_is_valid() -> None:
    assert set(config_of(base()).rules) == {"r_pack", "r_grow"}


def test_unknown_prize_names_the_rule_and_the_prize() -> None:
    doc = base()
    doc["rules"]["r_pack"]["prize"] = "nosuch"
    message = errors_of(doc)
    assert "rule 'r_pack'" in message and "unknown prize 'nosuch'" in message


def test_gift_pack_containing_itself_is_refused() -> None:
    doc = base()
    doc["prizes"]["pack"]["items"] = ["five_off", "pack"]
    assert "prize 'pack': contains itself" in errors_of(doc)
    doc = base()  # indirectly: a -> b -> a
    doc["prizes"]["a"] = {"type": "gift_pack", "items": ["b"]}
    doc["prizes"]["b"] = {"type": "gift_pack", "items": ["pts", "a"]}
    message = errors_of(doc)
    assert "prize 'a': contains itself: a -> b -> a" in message


def test_negative_budget_names_the_campaign() -> None:
    doc = base()
    doc["campaigns"]["c1"]["budget_cents"] = -1
    assert "campaign 'c1': budget_cents must not be negative" in errors_of(doc)


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda d: d["rules"]["r_pack"].update(campaign="zz"), "rule 'r_pack': unknown campaign 'zz'"),
    (lambda d: d["prizes"]["pack"]["items"].append("ghost"), "prize 'pack': unknown prize 'ghost'"),
    (lambda d: d["prizes"]["pack"]["items"].append("grow"), "prize 'pack': 'grow' is a referral coupon"),
    (lambda d: d["rules"]["r_grow"].update(trigger={"on": "code", "code": "X1"}),
     "rule 'r_grow': a referral coupon steps up with accepted invites"),
    (lambda d: d["prizes"].update(pct={"type": "coupon", "discount": "percent", "percent_off": 10,
                                       "validity": {"days": 1}}),
     "prize 'pct': a percent coupon needs max_off_cents"),
    (lambda d: d["prizes"]["five_off"].update(validity={"days": 3, "start": datetime(2026, 1, 1, tzinfo=UTC),
                                                        "end": datetime(2026, 2, 1, tzinfo=UTC)}),
     "prize 'five_off': validity takes either days or start/end"),
    (lambda d: d["prizes"].update(uc={"type": "universal_code", "code": "NEW666", "coupon": "pts", "count": 5}),
     "prize 'uc': coupon 'pts' is a points, not a coupon"),
    (lambda d: d["rules"].update(r2={"campaign": "c2", "prize": "bag",
                                     "trigger": {"on": "code", "code": "BAG1"}}),
     "prize 'bag' has finite stock and is granted by several campaigns (c1, c2)"),
    (lambda d: d["rules"].update(r3={"campaign": "c2", "prize": "pts", "trigger": {
        "on": "tier", "dimension": "segment", "entered": "important_winback"}}),
     "rule 'r3': unknown segment 'important_winback'"),
    (lambda d: d["rules"].update(r4={"campaign": "c2", "prize": "pts", "trigger": {
        "on": "event", "event": "browse", "first_purchase": True}}),
     "rule 'r4': first_purchase, min_amount_cents and categories only apply to purchases"),
    (lambda d: d["prizes"]["bag"].update(stock=-5), "prize 'bag': stock must not be negative"),
    (lambda d: d["prizes"]["grow"].update(steps=[{"invites": 2, "off_cents": 300}, {"invites": 3, "off_cents": 200}]),
     "prize 'grow': steps must increase"),
    (lambda d: d["prizes"]["five_off"].update(scope="sku"), "prize 'five_off': scope 'sku' needs scope_values"),
])
def test_inconsistencies_are_named(breakage: Any, expected: str) -> None:
    doc = base()
    breakage(doc)
    assert expected in errors_of(doc)


def test_all_problems_are_reported_at_once() -> None:
    doc = base()
    doc["campaigns"]["c1"]["budget_cents"] = -1
    doc["rules"]["r_pack"]["prize"] = "nosuch"
    message = errors_of(doc)
    assert "campaign 'c1'" in message and "rule 'r_pack'" in message


def test_load_config_reports_the_offending_rule(tmp_path: Path) -> None:
    user = tmp_path / "tierflow.toml"
    user.write_text('[rewards.rules.super_upgrade]\nprize = "no_such_pack"\n')
    with pytest.raises(ConfigError, match="rule 'super_upgrade': unknown prize 'no_such_pack'"):
        load_config(user)


def test_sample_campaign_set_covers_the_demo() -> None:
    """The defaults are what the demo runs: each campaign the issue asks for is there and live."""
    cfg = load_config().rewards
    by_trigger = {rid: (rule.trigger, cfg.prizes[rule.prize]) for rid, rule in cfg.active_rules().items()}
    kinds = {catalogue.prize_type(c.prize) for r in cfg.rules.values() for c in catalogue.flatten(r.prize, cfg.prizes)}
    assert {"coupon", "free_shipping", "referral_coupon", "universal_code", "points", "cash_envelope",
            "physical", "third_party"} <= kinds
    upgrade = [p for t, p in by_trigger.values()
               if isinstance(t, rules.TierTrigger) and (t.dimension, t.entered) == ("membership", "super")]
    assert upgrade and isinstance(upgrade[0], catalogue.GiftPack)
    assert any(isinstance(t, rules.TierTrigger) and t.entered == "important_win_back" and
               isinstance(p, catalogue.Coupon) for t, p in by_trigger.values())
    code = next(p for t, p in by_trigger.values() if isinstance(t, rules.CodeTrigger))
    assert isinstance(code, catalogue.UniversalCode) and (code.code, code.count) == ("NEW666", 100)
    assert any(isinstance(p, catalogue.ReferralCoupon) and t.kind == "referral_accept"  # type: ignore[union-attr]
               for t, p in by_trigger.values())
    assert any(isinstance(p, catalogue.Points) and isinstance(t, rules.EventTrigger) and t.first_purchase
               for t, p in by_trigger.values())
    envelope = next(p for t, p in by_trigger.values() if isinstance(p, catalogue.CashEnvelope))
    assert envelope.pending_days > 0


# --- rule matching ------------------------------------------------------------


def purchase(**overrides: Any) -> Purchase:
    fields: dict[str, Any] = {
        "event_id": "e1", "user_id": "u1", "ts": T0, "channel": "app", "order_id": "o1", "amount": 88.0,
        "currency": "CNY", "items": [Item(sku="S1", category="snacks", qty=2, price=44.0, brand="acme")],
    }
    fields.update(overrides)
    return Purchase(**fields)


def event_config(trigger: dict[str, Any], **campaign: Any) -> RewardsConfig:
    return config_of(base(prizes={"pts": {"type": "points", "points": 10}}, campaigns={"c": campaign},
                          rules={"r": {"campaign": "c", "prize": "pts", "trigger": trigger}}))


def fired(cfg: RewardsConfig, event: Any, first_purchase_ms: int | None = None) -> list[str]:
    return [i.rule_id for i in rules.match_event(cfg, event, T0, first_purchase_ms)]


TIER_CHANGE: dict[str, Any] = {
    "user_id": "u1", "dimension": "segment", "old": None, "new": "important_value", "version": 1, "seq": 1,
    "reason": "event", "scores": {"r": 5, "f": 4, "m": 5}, "points": 0, "repurchases": 0,
    "event_time": "2026-04-23T12:00:00Z",
}


def tier_change(dimension: str, old: str | None, new: str | None, version: int) -> TierChange:
    """A `tier.changes` record at T0."""
    return msgspec.convert({**TIER_CHANGE, "dimension": dimension, "old": old, "new": new, "version": version},
                           TierChange)


def test_tier_trigger_needs_the_tier_entered_and_an_allowed_origin() -> None:
    cfg = event_config({"on": "tier", "dimension": "membership", "entered": "super", "from": ["ordinary"]})
    [intent] = rules.match_tier_change(cfg, tier_change("membership", "ordinary", "super", 4))
    assert intent.trigger_id == "tier:membership:v4" and intent.at_ms == T0
    assert rules.match_tier_change(cfg, tier_change("membership", "paid", "super", 5)) == []
    assert rules.match_tier_change(cfg, tier_change("membership", "super", "ordinary", 6)) == []
    assert rules.match_tier_change(cfg, tier_change("lifecycle", "ordinary", "super", 7)) == []


def test_first_purchase_condition_uses_the_users_earliest_purchase() -> None:
    cfg = event_config({"on": "event", "event": "purchase", "first_purchase": True})
    assert fired(cfg, purchase(), first_purchase_ms=T0) == ["r"]
    assert fired(cfg, purchase(), first_purchase_ms=T0 - DAY_MS) == []  # an earlier purchase exists
    assert fired(cfg, purchase(), first_purchase_ms=None) == []


def test_purchase_conditions() -> None:
    cfg = event_config({"on": "event", "event": "purchase", "min_amount_cents": 5000,
                        "categories": ["snacks"], "channels": ["app"]})
    assert fired(cfg, purchase()) == ["r"]
    assert fired(cfg, purchase(amount=49.99)) == []
    assert fired(cfg, purchase(channel="store")) == []
    assert fired(cfg, purchase(items=[Item(sku="S2", category="beauty", qty=1, price=88.0)])) == []


def test_interaction_conditions() -> None:
    cfg = event_config({"on": "event", "event": "interaction", "kind": "campaign_join", "targets": ["summer"]})
    join = Interaction(event_id="e9", user_id="u1", ts=T0, channel="app", kind="campaign_join", target="summer")
    assert fired(cfg, join) == ["r"]
    assert fired(cfg, msgspec.structs.replace(join, target="winter")) == []
    assert fired(cfg, msgspec.structs.replace(join, kind="share")) == []
    assert fired(cfg, Browse(event_id="e8", user_id="u1", ts=T0, channel="app", page="home")) == []


def test_active_window_and_disabled_campaigns() -> None:
    trigger = {"on": "event", "event": "purchase"}
    start, end = datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)
    windowed = event_config(trigger, start=start, end=end)
    assert fired(windowed, purchase()) == ["r"]
    assert rules.match_event(windowed, purchase(), int(end.timestamp() * 1000)) == []  # end is exclusive
    assert rules.match_event(windowed, purchase(), int(start.timestamp() * 1000) - 1) == []
    assert fired(event_config(trigger, enabled=False), purchase()) == []


def test_codes_resolve_case_insensitively_and_say_why_not() -> None:
    cfg = event_config({"on": "code", "code": "NEW666"}, end=datetime(2026, 5, 1, tzinfo=UTC))
    intent = rules.match_code(cfg, " new666 ", "u1", T0)
    assert isinstance(intent, rules.GrantIntent) and intent.trigger_id == "code:NEW666"
    assert rules.match_code(cfg, "OLD777", "u1", T0) == "unknown_code"
    assert rules.match_code(cfg, "NEW666", "u1", T0 + 30 * DAY_MS) == "inactive"


ids = st.text(min_size=1, max_size=6, alphabet="ab:|\"[],")


@given(ids, ids, ids, ids, ids, ids)
def test_idempotency_keys_never_collide(r1: str, u1: str, t1: str, r2: str, u2: str, t2: str) -> None:
    a = rules.GrantIntent(r1, "c", "p", u1, t1, 0)
    b = rules.GrantIntent(r2, "c", "p", u2, t2, 0)
    assert (a.idempotency_key == b.idempotency_key) == ((r1, u1, t1) == (r2, u2, t2))


def test_malformed_tier_change_records_are_value_errors() -> None:
    """The runtime skips a tier change that raises ValueError, with a warning."""
    cfg = event_config({"on": "tier", "dimension": "segment", "entered": "important_value"})
    [intent] = rules.match_tier_change(cfg, msgspec.convert(TIER_CHANGE, TierChange))
    assert intent.at_ms == T0
    with pytest.raises(ValueError, match="dimension"):
        msgspec.convert({**TIER_CHANGE, "dimension": "mood"}, TierChange)
    with pytest.raises(ValueError, match="version"):
        msgspec.convert({k: v for k, v in TIER_CHANGE.items() if k != "version"}, TierChange)
    with pytest.raises(ValueError, match="event_time"):
        msgspec.json.decode(msgspec.json.encode({**TIER_CHANGE, "event_time": 1_776_945_600_000}), type=TierChange)
    with pytest.raises(ValueError):  # matches the pattern, but is no date
        rules.match_tier_change(cfg, msgspec.convert({**TIER_CHANGE, "event_time": "2026-02-30T12:00:00Z"},
                                                     TierChange))


# --- catalogue ----------------------------------------------------------------


def test_gift_packs_expand_cost_and_stock() -> None:
    cfg = config_of(base())
    needs = catalogue.needs("pack", cfg.prizes, cfg.point_value_cents)
    assert needs.cost_cents == 500 + 900 and needs.stock == {"bag": 1} and needs.pools == {}
    ctx = IssueContext("c1", "r_pack", "k", T0, "shop1", 1)
    items = catalogue.issue("pack", cfg.prizes, ctx, {})
    assert [i.type for i in items] == ["coupon", "physical"]
    assert items == catalogue.issue("pack", cfg.prizes, ctx, {})  # deterministic ids: replays name the same items
    assert items[1].fulfilment is not None and items[1].fulfilment.status == "awaiting_address"


def test_referral_steps() -> None:
    grow = config_of(base()).prizes["grow"]
    assert isinstance(grow, catalogue.ReferralCoupon)
    assert [catalogue.reached_step(grow, n) for n in range(5)] == [0, 1, 1, 2, 2]
    assert catalogue.step_cost(grow, 0, 1) == 100
    assert catalogue.step_cost(grow, 1, 2) == 200  # the cancelled coupon's value is given back


def test_points_are_spent_soonest_expiring_first() -> None:
    def lot(name: str, expires: int | None) -> RewardItem:
        return RewardItem(name, "points", "p", "c", "r", 0, T0, points=100, expires_ms=expires)

    lots = [(lot("never", None), 100), (lot("late", T0 + 9 * DAY_MS), 100), (lot("soon", T0 + DAY_MS), 30),
            (lot("gone", T0 - 1), 100)]
    plan = plan_consume(lots, 150, T0)
    assert [(c.item.item_id, c.before, c.after) for c in plan] == [("soon", 30, 0), ("late", 100, 0),
                                                                     ("never", 100, 80)]
    with pytest.raises(RewardError, match="230 available"):
        plan_consume(lots, 231, T0)


# --- coupon applicability -----------------------------------------------------


def terms(**overrides: Any) -> CouponTerms:
    fields: dict[str, Any] = {
        "discount": "reduction", "off_cents": 2000, "percent_off": 0, "threshold_cents": 10_000, "scope": "all",
        "scope_values": [], "issuer": "merchant", "merchant": "shop1", "valid_from_ms": T0,
        "valid_until_ms": T0 + 7 * DAY_MS,
    }
    fields.update(overrides)
    return CouponTerms(**fields)


def order(*lines: tuple[str, str, str, int], at: int = T0 + DAY_MS, shop: str = "shop1") -> redeem.Order:
    return redeem.Order("o1", shop, at, tuple(redeem.OrderLine(*line) for line in lines))


SNACK = ("S1", "snacks", "acme", 6000)
BAG = ("B1", "bags", "lotus", 5000)


def test_threshold_reduction_counts_in_scope_lines_only() -> None:
    assert redeem.apply(terms(), order(SNACK, BAG)) == redeem.Verdict(True, 2000)
    snacks_only = terms(scope="category", scope_values=["snacks"])
    assert redeem.apply(snacks_only, order(SNACK, BAG)).reason == "below_threshold"
    assert redeem.apply(snacks_only, order(BAG)).reason == "out_of_scope"
    assert redeem.apply(terms(scope="brand", scope_values=["lotus"], threshold_cents=0),
                        order(SNACK, BAG)).ok
    assert redeem.apply(terms(scope="sku", scope_values=["S1"], threshold_cents=6000), order(SNACK)).ok


def test_no_threshold_coupon_never_takes_more_than_the_lines() -> None:
    assert redeem.apply(terms(threshold_cents=0), order(("S9", "x", None, 1500))).discount_cents == 1500


def test_percent_discount_is_capped() -> None:
    pct = terms(discount="percent", percent_off=20, off_cents=1500, threshold_cents=0)
    assert redeem.apply(pct, order(BAG)).discount_cents == 1000
    assert redeem.apply(pct, order(SNACK, BAG)).discount_cents == 1500


def test_validity_window_and_merchant() -> None:
    assert redeem.apply(terms(), order(SNACK, BAG, at=T0)).ok  # from is inclusive
    assert redeem.apply(terms(), order(SNACK, BAG, at=T0 - 1)).reason == "not_yet_valid"
    assert redeem.apply(terms(), order(SNACK, BAG, at=T0 + 7 * DAY_MS)).reason == "expired"
    assert redeem.apply(terms(), order(SNACK, BAG, shop="other")).reason == "wrong_merchant"
    assert redeem.apply(terms(issuer="platform", merchant=None), order(SNACK, BAG, shop="other")).ok


def test_free_shipping_covers_up_to_its_face_value() -> None:
    ship = terms(discount="shipping", off_cents=1200, threshold_cents=0)
    assert redeem.apply(ship, order(SNACK)).discount_cents == 1200
    assert redeem.apply(ship, redeem.Order("o", "shop1", T0, (redeem.OrderLine(*SNACK),), 800)).discount_cents == 800


def test_wallet_status_and_item_kind_are_checked() -> None:
    coupon = RewardItem("C-1", "coupon", "p", "c", "r", 2000, T0, terms=terms())
    assert redeem.check(coupon, "active", order(SNACK, BAG)).ok
    assert redeem.check(coupon, "redeemed", order(SNACK, BAG)).reason == "coupon_redeemed"
    assert redeem.check(coupon, "cancelled", order(SNACK, BAG)).reason == "coupon_cancelled"
    assert redeem.check(None, None, order(SNACK)).reason == "unknown_coupon"
    points = RewardItem("P-1", "points", "p", "c", "r", 100, T0, points=100)
    assert redeem.check(points, "active", order(SNACK)).reason == "not_a_coupon"


money = st.integers(min_value=0, max_value=10**7)
lines = st.lists(st.tuples(st.sampled_from(["S1", "S2"]), st.sampled_from(["snacks", "bags"]),
                           st.sampled_from(["acme", None]), money), min_size=1, max_size=5)


@given(lines, st.sampled_from(["reduction", "percent", "shipping"]), st.integers(1, 99), money, money,
       st.sampled_from([("all", []), ("category", ["snacks"]), ("brand", ["acme"]), ("sku", ["S2"])]))
def test_a_discount_never_exceeds_its_face_or_the_lines_it_covers(
    order_lines: list[tuple[str, str, str | None, int]], discount: str, percent: int, off: int, threshold: int,
    scope: tuple[str, list[str]],
) -> None:
    t = terms(discount=discount, percent_off=percent if discount == "percent" else 0, off_cents=off,
              threshold_cents=threshold, scope=scope[0], scope_values=scope[1])
    o = order(*order_lines)
    verdict = redeem.apply(t, o)
    eligible = redeem.eligible_cents(t, o)
    assert verdict.ok == (eligible > 0 and eligible >= threshold)
    assert 0 <= verdict.discount_cents <= off
    if discount != "shipping":
        assert verdict.discount_cents <= eligible


@given(st.lists(st.tuples(st.integers(0, 500), st.one_of(st.none(), st.integers(-5, 5))), max_size=6),
       st.integers(1, 1500))
def test_spending_takes_exactly_what_was_asked_from_live_lots(lots: list[tuple[int, int | None]], points: int) -> None:
    held = [(RewardItem(f"L{n}", "points", "p", "c", "r", 0, T0, points=max(left, 1),
                        expires_ms=None if days is None else T0 + days * DAY_MS), left)
            for n, (left, days) in enumerate(lots)]
    live = sum(left for item, left in held if item.expires_ms is None or item.expires_ms > T0)
    if points > live:
        with pytest.raises(RewardError):
            plan_consume(held, points, T0)
        return
    plan = plan_consume(held, points, T0)
    assert sum(c.before - c.after for c in plan) == points
    assert all(c.after >= 0 and (c.item.expires_ms is None or c.item.expires_ms > T0) for c in plan)


def test_order_from_purchase_prices_lines_in_cents() -> None:
    o = redeem.Order.from_purchase(purchase(items=[Item(sku="S1", category="snacks", qty=3, price=0.1)]), T0, "s")
    assert o.lines[0].amount_cents == 30


# --- the reward.grants contract -------------------------------------------------


SCHEMA = json.loads((ROOT / "schemas" / "reward.grants.json").read_text())


def required_fields(struct: type[msgspec.Struct]) -> set[str]:
    fields = struct.__struct_fields__
    return set(fields[:len(fields) - len(struct.__struct_defaults__)])


@pytest.mark.parametrize(("struct", "schema"), [
    (RewardRecord, SCHEMA), (RewardItem, SCHEMA["$defs"]["item"]), (CouponTerms, SCHEMA["$defs"]["terms"]),
])
def test_schema_and_records_have_the_same_fields(struct: type[msgspec.Struct], schema: dict[str, Any]) -> None:
    assert set(schema["properties"]) == set(struct.__struct_fields__)
    assert set(schema["required"]) == required_fields(struct)


def sample_grant(cfg: RewardsConfig, rule_id: str) -> RewardRecord:
    rule = cfg.rules[rule_id]
    prize = cfg.prizes[rule.prize]
    ctx = IssueContext(rule.campaign, rule_id, "k", T0, cfg.shop, cfg.point_value_cents)
    if isinstance(prize, catalogue.ReferralCoupon):
        items, cost = [catalogue.referral_item(rule.prize, prize, 1, ctx)], catalogue.step_cost(prize, 0, 1)
    else:
        needs = catalogue.needs(rule.prize, cfg.prizes, cfg.point_value_cents)
        codes = {pid: [f"X-{i}" for i in range(n)] for pid, n in needs.pools.items()}
        items, cost = catalogue.issue(rule.prize, cfg.prizes, ctx, codes), needs.cost_cents
    return RewardRecord(f"grant:{rule_id}", "grant", "u1", T0, T0, items, cost_cents=cost, campaign=rule.campaign,
                        rule=rule_id, prize=rule.prize, prize_type=catalogue.prize_type(prize))  # type: ignore[arg-type]


def test_issued_records_validate_against_the_schema() -> None:
    cfg = load_config().rewards
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for rule_id in cfg.rules:
        validator.validate(json.loads(encode(sample_grant(cfg, rule_id))))
    broken = {**json.loads(encode(sample_grant(cfg, "super_upgrade"))), "kind": "gift"}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)
