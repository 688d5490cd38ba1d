"""The prize catalogue: prize types (coupons, free shipping, referral coupons,
universal codes, points, cash envelopes, physical goods, third-party rights,
gift packs), their validation, what they cost a campaign budget, and the wallet
items a grant produces.

Pure: no I/O. Money is integer cents.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import msgspec

from tierflow.pipeline.state.summary import DAY_MS
from tierflow.schemas.reward_grants import CouponTerms, Fulfilment, RewardItem, Scope

_CODE = re.compile(r"^[A-Z0-9]{1,32}$")


def ms(ts: datetime) -> int:
    """Epoch milliseconds; a datetime without offset is read as UTC."""
    return int((ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp() * 1000)


class Validity(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Either `days` from the grant, or a fixed window [start, end)."""

    days: int | None = None
    start: datetime | None = None
    end: datetime | None = None

    def window(self, granted_ms: int) -> tuple[int, int]:
        if self.days is not None:
            return granted_ms, granted_ms + self.days * DAY_MS
        assert self.start is not None and self.end is not None  # checked at load
        return ms(self.start), ms(self.end)


class _Prize(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="type"):
    # Shown to users and operators.
    name: str = ""


class _CouponBase(_Prize, frozen=True, kw_only=True):
    threshold_cents: int = 0
    scope: Scope = "all"
    scope_values: list[str] = []
    issuer: Literal["merchant", "platform"] = "merchant"
    # Merchant coupons: the shop they are valid at (default: rewards.shop).
    merchant: str | None = None
    validity: Validity


class Coupon(_CouponBase, frozen=True, kw_only=True, tag="coupon"):
    discount: Literal["reduction", "percent"] = "reduction"
    off_cents: int = 0
    percent_off: int = 0
    # Percent coupons: the most one redemption may take off (also its budget cost).
    max_off_cents: int = 0


class FreeShipping(_Prize, frozen=True, kw_only=True, tag="free_shipping"):
    face_cents: int
    issuer: Literal["merchant", "platform"] = "merchant"
    merchant: str | None = None
    validity: Validity


class Step(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    invites: int
    off_cents: int


class ReferralCoupon(_CouponBase, frozen=True, kw_only=True, tag="referral_coupon"):
    """A reduction coupon whose value steps up with accepted invites."""

    steps: list[Step]


class UniversalCode(_Prize, frozen=True, kw_only=True, tag="universal_code"):
    """A public code (NEW666) backed by `count` individual coupons NEW666-001.. of prize `coupon`."""

    code: str
    coupon: str
    count: int


class Points(_Prize, frozen=True, kw_only=True, tag="points"):
    points: int
    # Days until this grant's points expire; None = never.
    expires_days: int | None = None


class CashEnvelope(_Prize, frozen=True, kw_only=True, tag="cash_envelope"):
    amount_cents: int
    # Granted pending; usable this many days later (granted 23 Apr, usable 1 May = 8).
    pending_days: int


class Physical(_Prize, frozen=True, kw_only=True, tag="physical"):
    sku: str
    unit_cost_cents: int
    # Units available in total; every grant takes one (or more, inside packs).
    stock: int


class ThirdParty(_Prize, frozen=True, kw_only=True, tag="third_party"):
    partner: str
    right: str
    cost_cents: int
    # Finite partner allotment; None = unlimited.
    stock: int | None = None


class GiftPack(_Prize, frozen=True, kw_only=True, tag="gift_pack"):
    """Any combination of prizes (repeats allowed), granted all-or-nothing."""

    items: list[str]


Prize = (
    Coupon | FreeShipping | ReferralCoupon | UniversalCode | Points
    | CashEnvelope | Physical | ThirdParty | GiftPack
)


def prize_type(prize: Prize) -> str:
    return type(prize).__struct_config__.tag  # type: ignore[return-value]


def stocked(prize: Prize) -> bool:
    """Does granting it consume a finite campaign-side resource (inventory or a code pool)?"""
    return isinstance(prize, Physical | UniversalCode) or (
        isinstance(prize, ThirdParty) and prize.stock is not None
    )


def _check_validity(validity: Validity) -> list[str]:
    fixed = validity.start is not None or validity.end is not None
    if validity.days is not None and fixed:
        return ["validity takes either days or start/end, not both"]
    if validity.days is None:
        if validity.start is None or validity.end is None:
            return ["validity needs days, or both start and end"]
        if ms(validity.start) >= ms(validity.end):
            return ["validity start must be before end"]
    elif validity.days < 1:
        return ["validity days must be at least 1"]
    return []


def _check_coupon_base(prize: _CouponBase) -> list[str]:
    errors = _check_validity(prize.validity)
    if prize.threshold_cents < 0:
        errors.append("threshold_cents must not be negative")
    if prize.scope == "all" and prize.scope_values:
        errors.append("scope_values only apply to scope sku, brand or category")
    if prize.scope != "all" and not prize.scope_values:
        errors.append(f"scope {prize.scope!r} needs scope_values")
    if prize.issuer == "platform" and prize.merchant is not None:
        errors.append("platform coupons are valid at every shop; drop merchant")
    return errors


def _check_leaf(prize: Prize, prizes: Mapping[str, Prize]) -> list[str]:
    errors: list[str] = []
    if isinstance(prize, Coupon):
        errors = _check_coupon_base(prize)
        if prize.discount == "reduction":
            if prize.off_cents <= 0:
                errors.append("a reduction coupon needs off_cents > 0")
            if prize.percent_off or prize.max_off_cents:
                errors.append("percent_off and max_off_cents only apply to percent coupons")
        else:
            if not 1 <= prize.percent_off <= 99:
                errors.append("percent_off must be within 1..99")
            if prize.max_off_cents <= 0:
                errors.append("a percent coupon needs max_off_cents > 0 (its cap and budget cost)")
            if prize.off_cents:
                errors.append("off_cents only applies to reduction coupons")
    elif isinstance(prize, FreeShipping):
        errors = _check_validity(prize.validity)
        if prize.face_cents <= 0:
            errors.append("face_cents must be positive")
        if prize.issuer == "platform" and prize.merchant is not None:
            errors.append("platform coupons are valid at every shop; drop merchant")
    elif isinstance(prize, ReferralCoupon):
        errors = _check_coupon_base(prize)
        if not prize.steps:
            errors.append("a referral coupon needs at least one step")
        for before, after in zip(prize.steps, prize.steps[1:], strict=False):
            if after.invites <= before.invites or after.off_cents <= before.off_cents:
                errors.append("steps must increase in both invites and off_cents")
                break
        if prize.steps and (prize.steps[0].invites < 1 or prize.steps[0].off_cents <= 0):
            errors.append("the first step needs invites >= 1 and off_cents > 0")
    elif isinstance(prize, UniversalCode):
        target = prizes.get(prize.coupon)
        if target is None:
            errors.append(f"unknown coupon prize {prize.coupon!r}")
        elif not isinstance(target, Coupon | FreeShipping):
            errors.append(f"coupon {prize.coupon!r} is a {prize_type(target)}, not a coupon or free_shipping")
        if prize.count < 1:
            errors.append("count must be at least 1")
        if not _CODE.match(prize.code):
            errors.append("code must be 1-32 upper-case letters and digits")
    elif isinstance(prize, Points):
        if prize.points <= 0:
            errors.append("points must be positive")
        if prize.expires_days is not None and prize.expires_days < 1:
            errors.append("expires_days must be at least 1 (omit it for points that never expire)")
    elif isinstance(prize, CashEnvelope):
        if prize.amount_cents <= 0:
            errors.append("amount_cents must be positive")
        if prize.pending_days < 0:
            errors.append("pending_days must not be negative")
    elif isinstance(prize, Physical):
        if prize.unit_cost_cents < 0:
            errors.append("unit_cost_cents must not be negative")
        if prize.stock < 0:
            errors.append("stock must not be negative")
    elif isinstance(prize, ThirdParty):
        if prize.cost_cents < 0:
            errors.append("cost_cents must not be negative")
        if prize.stock is not None and prize.stock < 0:
            errors.append("stock must not be negative")
    return errors


def _pack_errors(pack_id: str, prizes: Mapping[str, Prize]) -> list[str]:
    """Unknown members, cycles (a pack containing itself, directly or not), referral coupons."""
    errors: list[str] = []

    def walk(prize_id: str, path: tuple[str, ...]) -> None:
        pack = prizes[prize_id]
        assert isinstance(pack, GiftPack)
        for member in pack.items:
            if member in path or member == prize_id:
                errors.append(f"contains itself: {' -> '.join((*path, prize_id, member))}")
                continue
            target = prizes.get(member)
            if target is None:
                errors.append(f"unknown prize {member!r}")
            elif isinstance(target, ReferralCoupon):
                errors.append(f"{member!r} is a referral coupon, which steps up on its own and cannot be packed")
            elif isinstance(target, GiftPack):
                walk(member, (*path, prize_id))

    if not prizes[pack_id].items:  # type: ignore[union-attr]
        errors.append("a gift pack needs at least one item")
    walk(pack_id, ())
    return errors


def check_catalogue(prizes: Mapping[str, Prize]) -> list[str]:
    """Every problem in the catalogue, each naming its prize."""
    errors: list[str] = []
    for prize_id, prize in prizes.items():
        found = _pack_errors(prize_id, prizes) if isinstance(prize, GiftPack) else _check_leaf(prize, prizes)
        errors += [f"prize {prize_id!r}: {message}" for message in found]
    codes = Counter(p.code for p in prizes.values() if isinstance(p, UniversalCode))
    errors += [f"universal code {code!r} is defined by {n} prizes" for code, n in codes.items() if n > 1]
    return errors


@dataclass(frozen=True, slots=True)
class Component:
    """One leaf prize a grant hands out (gift packs are expanded into these)."""

    prize_id: str
    prize: Prize


def flatten(prize_id: str, prizes: Mapping[str, Prize]) -> list[Component]:
    """The leaf prizes of a prize, packs expanded depth-first (the catalogue is acyclic)."""
    prize = prizes[prize_id]
    if isinstance(prize, GiftPack):
        return [c for member in prize.items for c in flatten(member, prizes)]
    return [Component(prize_id, prize)]


def unit_cost(prize_id: str, prizes: Mapping[str, Prize], point_value_cents: int) -> int:
    """What one grant of a prize commits from a campaign budget, at most.

    Coupons are charged at face value when granted (a budget is a commitment,
    not a forecast of redemptions); percent coupons at their cap. Referral
    coupons are charged step by step (see `step_cost`).
    """
    prize = prizes[prize_id]
    match prize:
        case Coupon(discount="reduction"):
            return prize.off_cents
        case Coupon():
            return prize.max_off_cents
        case FreeShipping():
            return prize.face_cents
        case ReferralCoupon():
            return prize.steps[0].off_cents
        case UniversalCode():
            return unit_cost(prize.coupon, prizes, point_value_cents)
        case Points():
            return prize.points * point_value_cents
        case CashEnvelope():
            return prize.amount_cents
        case Physical():
            return prize.unit_cost_cents
        case ThirdParty():
            return prize.cost_cents
        case GiftPack():
            return sum(unit_cost(m, prizes, point_value_cents) for m in prize.items)
    raise TypeError(prize)


@dataclass(frozen=True, slots=True)
class Needs:
    """The campaign-side resources one grant takes."""

    cost_cents: int
    stock: dict[str, int]  # prize id -> units (physical goods, limited third-party rights)
    pools: dict[str, int]  # universal-code prize id -> coupons to pop


def needs(prize_id: str, prizes: Mapping[str, Prize], point_value_cents: int) -> Needs:
    stock: Counter[str] = Counter()
    pools: Counter[str] = Counter()
    for component in flatten(prize_id, prizes):
        if isinstance(component.prize, UniversalCode):
            pools[component.prize_id] += 1
        elif stocked(component.prize):
            stock[component.prize_id] += 1
    return Needs(unit_cost(prize_id, prizes, point_value_cents), dict(stock), dict(pools))


def item_id(prefix: str, idempotency_key: str, index: int) -> str:
    """Deterministic: a replayed grant names its items exactly as the first attempt did."""
    digest = hashlib.blake2b(f"{idempotency_key}#{index}".encode(), digest_size=5).hexdigest().upper()
    return f"{prefix}-{digest}"


def coupon_terms(prize: Coupon | FreeShipping | ReferralCoupon, off_cents: int, granted_ms: int,
                 shop: str) -> CouponTerms:
    start, end = prize.validity.window(granted_ms)
    merchant = (prize.merchant or shop) if prize.issuer == "merchant" else None
    if isinstance(prize, FreeShipping):
        return CouponTerms("shipping", prize.face_cents, 0, 0, "all", [], prize.issuer, merchant, start, end)
    discount = prize.discount if isinstance(prize, Coupon) else "reduction"
    percent = prize.percent_off if isinstance(prize, Coupon) else 0
    return CouponTerms(discount, off_cents, percent, prize.threshold_cents, prize.scope,
                       list(prize.scope_values), prize.issuer, merchant, start, end)


@dataclass(frozen=True, slots=True)
class IssueContext:
    """Everything besides the prize that shapes the issued items."""

    campaign: str
    rule: str
    idempotency_key: str
    granted_ms: int
    shop: str
    point_value_cents: int
    address: str | None = None


def issue(prize_id: str, prizes: Mapping[str, Prize], ctx: IssueContext,
          codes: Mapping[str, list[str]]) -> list[RewardItem]:
    """The wallet items one grant produces. `codes` holds the coupons popped from
    each universal-code pool for this grant (campaign side, see ledger.py)."""
    items: list[RewardItem] = []
    popped = {pool: list(values) for pool, values in codes.items()}
    for index, component in enumerate(flatten(prize_id, prizes)):
        items.append(_issue_one(component, index, prizes, ctx, popped))
    return items


def _issue_one(component: Component, index: int, prizes: Mapping[str, Prize], ctx: IssueContext,
               popped: dict[str, list[str]]) -> RewardItem:
    prize, pid, at = component.prize, component.prize_id, ctx.granted_ms
    base = {"prize": pid, "campaign": ctx.campaign, "rule": ctx.rule, "granted_ms": at}
    key = ctx.idempotency_key
    match prize:
        case UniversalCode():
            coupon = prizes[prize.coupon]
            assert isinstance(coupon, Coupon | FreeShipping)
            value = unit_cost(prize.coupon, prizes, ctx.point_value_cents)
            return RewardItem(popped[pid].pop(0), "free_shipping" if isinstance(coupon, FreeShipping) else "coupon",
                              value_cents=value, code=prize.code,
                              terms=coupon_terms(coupon, _off(coupon), at, ctx.shop), **base)
        case Coupon():
            return RewardItem(item_id(pid.upper(), key, index), "coupon", value_cents=_off(prize),
                              terms=coupon_terms(prize, _off(prize), at, ctx.shop), **base)
        case FreeShipping():
            return RewardItem(item_id(pid.upper(), key, index), "free_shipping", value_cents=prize.face_cents,
                              terms=coupon_terms(prize, prize.face_cents, at, ctx.shop), **base)
        case Points():
            expires = at + prize.expires_days * DAY_MS if prize.expires_days is not None else None
            return RewardItem(item_id("P", key, index), "points", value_cents=prize.points * ctx.point_value_cents,
                              points=prize.points, expires_ms=expires, **base)
        case CashEnvelope():
            return RewardItem(item_id("E", key, index), "cash_envelope", value_cents=prize.amount_cents,
                              available_ms=at + prize.pending_days * DAY_MS, **base)
        case Physical():
            status = "ready" if ctx.address else "awaiting_address"
            return RewardItem(item_id("G", key, index), "physical", value_cents=prize.unit_cost_cents,
                              fulfilment=Fulfilment(status, sku=prize.sku, address=ctx.address), **base)
        case ThirdParty():
            return RewardItem(item_id("R", key, index), "third_party", value_cents=prize.cost_cents,
                              fulfilment=Fulfilment("pending_partner", partner=prize.partner, right=prize.right),
                              **base)
    raise TypeError(f"prize {pid!r} of type {prize_type(prize)} is not issued by issue()")


def initial_status(item: RewardItem) -> str:
    """An issued item's status in the wallet before anything happens to it."""
    if item.fulfilment is not None:
        return item.fulfilment.status
    return "granted" if item.type == "cash_envelope" else "active"


def _off(prize: Coupon | FreeShipping) -> int:
    if isinstance(prize, FreeShipping):
        return prize.face_cents
    return prize.off_cents if prize.discount == "reduction" else prize.max_off_cents


def referral_item(prize_id: str, prize: ReferralCoupon, step: int, ctx: IssueContext) -> RewardItem:
    """The coupon for a referral step (1-based). Each step is a new coupon."""
    off = prize.steps[step - 1].off_cents
    return RewardItem(item_id(prize_id.upper(), ctx.idempotency_key, 0), "referral_coupon", prize=prize_id,
                      campaign=ctx.campaign, rule=ctx.rule, value_cents=off, granted_ms=ctx.granted_ms,
                      terms=coupon_terms(prize, off, ctx.granted_ms, ctx.shop), step=step)


def reached_step(prize: ReferralCoupon, invites: int) -> int:
    """The highest 1-based step the invite count reaches (0 = none yet)."""
    return sum(1 for step in prize.steps if invites >= step.invites)


def step_cost(prize: ReferralCoupon, held_step: int, new_step: int) -> int:
    """Budget a step-up commits: the new coupon's value less the one it cancels."""
    held = prize.steps[held_step - 1].off_cents if held_step else 0
    return prize.steps[new_step - 1].off_cents - held
