"""Downgrade grace (docs/domain.md, "Downgrade grace and notices"): a downgrade of the
membership tier or the RFM segment is held for `tiering.downgrade.*_grace_days` before it
is published, a recovery within that time cancels it, and a `will_downgrade` notice goes
out `notice_days` before it takes effect. Pure: from an evaluation, the values last
published and the holds in force, what to publish now.

A hold starts at the instant the downgrade became due (the evaluation's event time: the
boundary that passed for time decay, the newest event for events) and ends `grace` days
later; both instants become boundaries of the decay schedule, so the timer releases the
downgrade (reason time_decay) and sends the notice on time, by event time.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from tierflow.pipeline.state.summary import DAY_MS
from tierflow.pipeline.tiering.config import TieringConfig
from tierflow.pipeline.tiering.evaluate import Evaluation
from tierflow.pipeline.tiering.rfm import SEGMENT_IDS

HELD = ("segment", "membership")


class Hold(msgspec.Struct, frozen=True, array_like=True):
    """A downgrade held back: due since `since_ms`; whether its notice went out."""

    since_ms: int
    noticed: bool = False


class Notice(msgspec.Struct, frozen=True):
    """A `will_downgrade` notice to publish: `held` stays until `downgrade_ms`, then `to`."""

    dimension: str
    held: str
    to: str
    at_ms: int
    downgrade_ms: int
    since_ms: int


class Graced(msgspec.Struct, frozen=True):
    # What to publish and store: held values kept, the next boundary including hold ends and notices.
    evaluation: Evaluation
    # The evaluation before grace (what the explanations describe).
    actual: Evaluation
    holds: dict[str, Hold]
    notices: list[Notice]
    # Dimensions whose held downgrade is published now, with when it was first due.
    released: dict[str, int]


def rank(dimension: str, value: str | None, config: TieringConfig) -> int | None:
    """Higher is better; None for a value outside the ranking (no value, an unknown tier)."""
    if dimension == "segment" and value in SEGMENT_IDS:
        return len(SEGMENT_IDS) - SEGMENT_IDS.index(value)
    if dimension == "membership" and value in config.tier_names:
        return config.tier_names.index(value)
    return None


def is_downgrade(dimension: str, old: str | None, new: str | None, config: TieringConfig) -> bool:
    before, after = rank(dimension, old, config), rank(dimension, new, config)
    return before is not None and after is not None and after < before


def _held(e: Evaluation, values: Mapping[str, str]) -> Evaluation:
    """The evaluation with these dimensions' values (and tier tags) replaced by the held ones."""
    if not values:
        return e
    tags = [t for t in e.tags if t.split(":", 1)[0] not in values] + [f"{d}:{v}" for d, v in values.items()]
    segment = values.get("segment", e.segment)
    membership = e.membership
    if "membership" in values:
        membership = msgspec.structs.replace(membership, tier=values["membership"])
    return msgspec.structs.replace(e, segment=segment, membership=membership, tags=tags)


def apply_grace(e: Evaluation, stored: Mapping[str, str], at_ms: int, config: TieringConfig) -> Graced:
    """`stored`: the user's tier fields as read with the state (`v:<dimension>` the value last
    published, `holds` the holds in force); `at_ms`: when what this evaluation found became due."""
    rules = config.downgrade
    if not (rules.membership_grace_days or rules.segment_grace_days or stored.get("holds")):
        return Graced(e, e, {}, [], {})  # no grace configured (the default): the hot path
    holds = decode_holds(stored.get("holds"))
    kept: dict[str, Hold] = {}
    notices: list[Notice] = []
    released: dict[str, int] = {}
    values: dict[str, str] = {}
    boundaries = [e.next_boundary_ms]
    for dim in HELD:
        grace = rules.grace_days(dim) * DAY_MS
        old, new = stored.get(f"v:{dim}"), e.value(dim)
        if not grace or old is None or new is None or not is_downgrade(dim, old, new, config):
            continue
        hold = holds.get(dim) or Hold(min(at_ms, e.as_of_ms))
        until = hold.since_ms + grace
        if e.as_of_ms >= until:
            released[dim] = hold.since_ms
            continue
        values[dim] = old
        notice_at = max(hold.since_ms, until - rules.notice_days * DAY_MS)
        if rules.notice_days and not hold.noticed:
            if e.as_of_ms >= notice_at:
                notices.append(Notice(dim, old, new, notice_at, until, hold.since_ms))
                hold = Hold(hold.since_ms, noticed=True)
            else:
                boundaries.append(notice_at)
        boundaries.append(until)
        kept[dim] = hold
    held = _held(e, values)
    if values:
        held = msgspec.structs.replace(held, next_boundary_ms=min(b for b in boundaries if b is not None))
    return Graced(held, e, kept, notices, released)


def encode_holds(holds: Mapping[str, Hold]) -> str:
    """The stored form ('' for none), compared as text by the commit."""
    return msgspec.json.encode(dict(sorted(holds.items()))).decode() if holds else ""


def decode_holds(text: str | None) -> dict[str, Hold]:
    return msgspec.json.decode(text, type=dict[str, Hold]) if text else {}
