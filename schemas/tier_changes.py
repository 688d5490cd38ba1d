"""The `tier.changes` record: one per real change of a user's segment, lifecycle
stage, membership tier or AIPL stage. Mirrors schemas/tier.changes.json.

Kafka key: the user id. Consumers drop duplicates by (user_id, dimension,
version): versions run 1, 2, 3, ... per user and dimension with no gap, and
`seq` runs the same way over all of a user's dimensions.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from tierflow.schemas.events import RFC3339

Dimension = Literal["segment", "lifecycle", "membership", "aipl"]
Reason = Literal["event", "time_decay", "means_shift", "config_change"]
REASONS: tuple[Reason, ...] = ("event", "time_decay", "means_shift", "config_change")
Score = Annotated[int, msgspec.Meta(ge=1, le=5)] | None
Value = Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None
Counter = Annotated[int, msgspec.Meta(ge=1)]


class ChangeScores(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """RFM scores after the change; null for a user without a purchase."""

    r: Score
    f: Score
    m: Score


class TierChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    dimension: Dimension
    # null: the user had (or now has) no value in this dimension, e.g. no segment before a purchase.
    old: Value
    new: Value
    # Per user and dimension: 1, 2, 3, ... with no gap.
    version: Counter
    # Per user over all dimensions: 1, 2, 3, ... with no gap.
    seq: Counter
    reason: Reason
    scores: ChangeScores
    points: Annotated[int, msgspec.Meta(ge=0)]
    repurchases: Annotated[int, msgspec.Meta(ge=0)]
    # The newest event's time (reason event), the boundary that passed (time_decay), or
    # the evaluation instant (means_shift, config_change).
    event_time: Annotated[str, msgspec.Meta(pattern=RFC3339)]

    @property
    def key(self) -> tuple[str, str, int]:
        """What a consumer deduplicates on."""
        return (self.user_id, self.dimension, self.version)
