"""The `tierflow.erasures` record: one customer erased by `tierflow forget`. The topic is
compacted (key: the user id), so it keeps the latest erasure of every customer for good:
replays and `tierflow rebuild` read it to skip what the erased customer left on the
retained topics, and downstream consumers read it to erase the customer on their side.
schemas/tierflow.erasures.json is generated from it (`python -m tierflow.schemas`).

Forward compatibility: as for every published type, unknown fields are ignored.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from tierflow.schemas.events import RFC3339

Marks = Annotated[dict[str, Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(description=(
    "Per \"topic:partition\" (the input topics, tier.changes and reward.grants): the offset of the first record"
    " written after the erasure. The customer's records below it belong to the erased customer and are skipped"
    " by replays, `tierflow rebuild` and the archive; records from it on belong to a new customer of that id."
))]


class Erasure(msgspec.Struct, frozen=True):
    """Value of a record on topic tierflow.erasures (key: the user id): a customer whose data
    tierflow erased. Consumers erase the customer's data they hold, and treat later records of
    the same id as a new customer."""

    user_id: Annotated[
        str, msgspec.Meta(min_length=1, max_length=128, description="The erased customer; also the Kafka record key.")
    ]
    erasure_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description=(
        "Unique per erasure: consumers that act on each erasure once deduplicate on it."
    ))]
    erased_at: Annotated[str, msgspec.Meta(pattern=RFC3339, description="RFC 3339: when the erasure was recorded.")]
    marks: Marks

    def skips(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the record at this offset predates the erasure (it is the erased customer's)."""
        return offset < self.marks.get(f"{topic}:{partition}", 0)


def decode(value: bytes) -> Erasure:
    return msgspec.json.decode(value, type=Erasure)


def encode(record: Erasure) -> bytes:
    return msgspec.json.encode(record)
