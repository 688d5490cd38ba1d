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
Reason = Literal["event", "time_decay", "means_shift", "config_change"]
REASONS: tuple[Reason, ...] = get_args(Reason)
Score = Annotated[int, msgspec.Meta(ge=1, le=5)] | None
Value = Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None
Counter = Annotated[int, msgspec.Meta(ge=1)]


class ChangeScores(msgspec.Struct, frozen=True):
    """RFM scores (1..5) after the change; null for a user without a purchase."""

    r: Score
    f: Score
    m: Score


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
        "event: new events; time_decay: a boundary passed with no event (recency threshold, purchase leaving the"
        " window, paid term); means_shift: the population means or quantile cut points moved; config_change:"
        " re-evaluation under a new configuration."
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

    @property
    def key(self) -> tuple[str, str, int]:
        """What a consumer deduplicates on."""
        return (self.user_id, self.dimension, self.version)
