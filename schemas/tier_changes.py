"""The `tier.changes` record: one per real change of a user's segment, lifecycle
stage, membership tier or AIPL stage. schemas/tier.changes.json is generated from
it (`python -m tierflow.schemas`).

Kafka key: the user id. Consumers drop duplicates by (user_id, dimension,
version): versions run 1, 2, 3, ... per user and dimension with no gap, and
`seq` runs the same way over all of a user's dimensions.

Forward compatibility: the types do not forbid unknown fields, so every consumer
(rewards, the archive, examples/marketing_consumer.py) ignores a field a newer
producer adds; the JSON Schema states the same with `additionalProperties: true`.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec

from tierflow.schemas.events import RFC3339

Dimension = Literal["segment", "lifecycle", "membership", "aipl"]
Reason = Literal["event", "refund", "time_decay", "means_shift", "config_change", "will_downgrade"]
REASONS: tuple[Reason, ...] = get_args(Reason)
# The reasons an input event caused: event_time is that event's time.
EVENT_REASONS: tuple[Reason, ...] = ("event", "refund")
# The reason of a record that announces a held downgrade instead of making a change.
NOTICE_REASON: Reason = "will_downgrade"
Score = Annotated[int, msgspec.Meta(ge=1, le=5)] | None
Value = Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None
Counter = Annotated[int, msgspec.Meta(ge=1)]


class ChangeScores(msgspec.Struct, frozen=True):
    """RFM scores (1..5) after the change; null for a user without a purchase."""

    r: Score
    f: Score
    m: Score


Amount = int | float


class Factor(msgspec.Struct, frozen=True, omit_defaults=True):
    """One RFM input behind a segment: the value, the score it earned, the bound that decided
    the score, and high/low against the population mean of that score."""

    value: Annotated[Amount, msgspec.Meta(description=(
        "r: days since the last purchase; f: purchases in the window; m: spend in the window (yuan)."
    ))]
    score: Annotated[int, msgspec.Meta(ge=1, le=5)]
    high: Annotated[bool, msgspec.Meta(description="The score is strictly above the population mean.")]
    bound: Annotated[Amount | None, msgspec.Meta(description=(
        "The threshold (or quantile cut) the value reached for this score, in the value's unit: r at most that"
        " many days, f and m at least that much; absent for score 1 (none reached)."
    ))] = None
    mean: Annotated[float | None, msgspec.Meta(description="Population mean of the score; absent before any.")] = None


class Why(msgspec.Struct, frozen=True, omit_defaults=True):
    """What decided the new value: the rule and its inputs. Only the fields of the rule are present."""

    rule: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description=(
        "segment: rfm (high/low of R, F, M), no_purchase; lifecycle: no_purchase, first_purchase, repurchases,"
        " vip_tier, vip_spend; membership: points_tier, paid_term; aipl: no_event, aware, interest, purchase,"
        " loyalty_purchases, loyalty_advocacy. Open: a newer producer may add rules."
    ))]
    r: Factor | None = None
    f: Factor | None = None
    m: Factor | None = None
    prev: Annotated[ChangeScores | None, msgspec.Meta(description="segment: the RFM scores before.")] = None
    points: Annotated[int | None, msgspec.Meta(description="Membership points score.")] = None
    purchases: Annotated[int | None, msgspec.Meta(description="Lifetime purchases.")] = None
    spend: Annotated[float | None, msgspec.Meta(description="Lifetime spend (yuan).")] = None
    paid_until: Annotated[str, msgspec.Meta(
        pattern=RFC3339, description="membership: end of the paid term (RFC 3339), when ever bought."
    )] | None = None
    bounds: Annotated[dict[str, Amount] | None, msgspec.Meta(description=(
        "The rule's thresholds that were reached, e.g. min_points, or min_repurchases and min_spend (yuan)."
    ))] = None
    event_id: Annotated[str | None, msgspec.Meta(description=(
        "reason event: the newest event of the batch that triggered the evaluation."
    ))] = None
    event_type: Annotated[str | None, msgspec.Meta(description="reason event: that event's type.")] = None
    held_since: Annotated[str, msgspec.Meta(pattern=RFC3339, description=(
        "A downgrade held for its grace period: when it was first due (RFC 3339)."
    ))] | None = None
    downgrade_to: Annotated[Value, msgspec.Meta(description="will_downgrade: the value the downgrade leads to.")] = None
    downgrade_at: Annotated[str, msgspec.Meta(pattern=RFC3339, description=(
        "will_downgrade: when the downgrade takes effect unless the customer recovers first (RFC 3339)."
    ))] | None = None


class TierChange(msgspec.Struct, frozen=True):
    """Value of a record on topic tier.changes (key: the user id): one real change of a
    user's segment, lifecycle stage, membership tier or AIPL stage. Consumers drop
    duplicates by (user_id, dimension, version) and ignore fields they do not know."""

    user_id: Annotated[
        str, msgspec.Meta(min_length=1, max_length=128, description="The customer; also the Kafka record key.")
    ]
    dimension: Annotated[Dimension, msgspec.Meta(description=(
        "segment: the eight RFM segments; lifecycle: new / first_purchase / repeat / vip; membership: the points"
        " tiers and the paid tier; aipl: aware / interest / purchase / loyalty."
    ))]
    old: Annotated[Value, msgspec.Meta(description=(
        "Value before the change; null when the user had none (e.g. no segment before the first purchase)."
    ))]
    new: Annotated[Value, msgspec.Meta(description="Value after the change; null when the user no longer has one.")]
    version: Annotated[Counter, msgspec.Meta(description="Per user and dimension: 1, 2, 3, ... with no gap.")]
    seq: Annotated[Counter, msgspec.Meta(description="Per user over all dimensions: 1, 2, 3, ... with no gap.")]
    reason: Annotated[Reason, msgspec.Meta(description=(
        "event: new events; refund: new events, a refund among them (it lowers spend and may take a purchase"
        " away); time_decay: a boundary passed with no event (recency threshold, purchase leaving the"
        " window, paid term); means_shift: the population means or quantile cut points moved; config_change:"
        " re-evaluation under a new configuration; will_downgrade: not a change but a notice that a held"
        " downgrade takes effect at why.downgrade_at (old = new = the value held, version unchanged)."
    ))]
    scores: ChangeScores
    points: Annotated[int, msgspec.Meta(ge=0, description="Membership points score after the change.")]
    repurchases: Annotated[int, msgspec.Meta(
        ge=0, description="Purchases after the first (the F<n> tag), after the change."
    )]
    event_time: Annotated[str, msgspec.Meta(pattern=RFC3339, description=(
        "RFC 3339: the newest event's time (event), the boundary that passed (time_decay), or the evaluation"
        " instant (means_shift, config_change)."
    ))]
    why: Annotated[Why | None, msgspec.Meta(description=(
        "Why the new value: the rule and the inputs that decided it. Absent on records written before it existed."
    ))] = None

    @property
    def key(self) -> tuple[str, str, int]:
        """What a consumer deduplicates on."""
        return (self.user_id, self.dimension, self.version)
