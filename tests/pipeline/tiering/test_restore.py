"""Tier versions rebuilt from `tier.changes` (pure): what was published, and what is
left to publish so the topic ends at the evaluated values without repeating itself."""

from __future__ import annotations

from tierflow.pipeline.state.summary import iso
from tierflow.pipeline.tiering.evaluate import Evaluation
from tierflow.pipeline.tiering.lifecycle import Lifecycle
from tierflow.pipeline.tiering.membership import Membership
from tierflow.pipeline.tiering.restore import Published, fold, reconcile
from tierflow.pipeline.tiering.rfm import Scores
from tierflow.schemas.tier_changes import ChangeScores, TierChange

T0 = 1_777_000_000_000


def change(dim: str, old: str | None, new: str | None, version: int, seq: int, reason: str = "event",
           at: int = T0) -> TierChange:
    return TierChange(user_id="u1", dimension=dim, old=old, new=new, version=version, seq=seq,  # type: ignore[arg-type]
                      reason=reason, scores=ChangeScores(5, 1, 2), points=0, repurchases=0,  # type: ignore[arg-type]
                      event_time=iso(at))


def evaluation(segment: str | None, lifecycle: str = "first_purchase", aipl: str = "purchase",
               as_of: int = T0) -> Evaluation:
    return Evaluation(user_id="u1", as_of_ms=as_of, raw=None, scores=Scores(5, 1, 2) if segment else None,
                      high=None, segment=segment, lifecycle=Lifecycle(lifecycle, 0),
                      membership=Membership("ordinary", 120, 888.0, None, False), aipl=aipl, tags=[],
                      next_boundary_ms=None)


HISTORY = [
    change("aipl", None, "aware", 1, 1),
    change("lifecycle", None, "new", 1, 2),
    change("membership", None, "ordinary", 1, 3),
    change("aipl", "aware", "purchase", 2, 4, at=T0 + 10),
    change("lifecycle", "new", "first_purchase", 2, 5, at=T0 + 10),
    change("segment", None, "general_develop", 1, 6, at=T0 + 10),
    change("segment", "general_develop", "general_retain", 2, 7, reason="time_decay", at=T0 + 99),
]


def published() -> dict[str, Published]:
    found: dict[str, Published] = {}
    # Any order, some records twice: the topic is read partition by partition, at least once.
    for record in [*reversed(HISTORY), HISTORY[2], HISTORY[0]]:
        fold(found, record)
    return found


def test_the_last_published_value_and_version_of_each_dimension() -> None:
    p = published()["u1"]
    assert p.values == {"aipl": "purchase", "lifecycle": "first_purchase", "membership": "ordinary",
                        "segment": "general_retain"}
    assert p.versions == {"aipl": 2, "lifecycle": 2, "membership": 1, "segment": 2}
    assert p.seq == 7
    assert p.event_ms == T0 + 10  # the time-decay record was not caused by an event


def test_nothing_is_published_again_when_the_values_are_those_published() -> None:
    assert reconcile("u1", published()["u1"], evaluation("general_retain"), T0 + 10) == []


def test_a_change_that_never_reached_the_topic_continues_the_versions() -> None:
    [record] = reconcile("u1", published()["u1"], evaluation("general_value"), T0 + 50)
    assert (record.dimension, record.old, record.new) == ("segment", "general_retain", "general_value")
    assert (record.version, record.seq, record.reason, record.event_time) == (3, 8, "event", iso(T0 + 50))
    assert record.points == 120 and record.scores == ChangeScores(5, 1, 2)


def test_a_change_time_made_since_is_a_time_decay_at_the_evaluation() -> None:
    records = reconcile("u1", published()["u1"], evaluation("general_win_back", as_of=T0 + 500), T0 + 10)
    assert [(r.version, r.seq, r.reason, r.event_time) for r in records] == [(3, 8, "time_decay", iso(T0 + 500))]


def test_a_user_never_published_starts_at_version_one() -> None:
    records = reconcile("u1", None, evaluation(None, lifecycle="new", aipl="aware"), T0)
    assert [(r.dimension, r.old, r.new, r.version, r.seq) for r in records] == [
        ("lifecycle", None, "new", 1, 1), ("membership", None, "ordinary", 1, 2), ("aipl", None, "aware", 1, 3)]


def test_a_user_without_retained_events_is_left_alone() -> None:
    assert reconcile("u1", published()["u1"], None, None) == []
