"""A refund that moves a customer's tiers publishes the changes with reason refund,
naming the refund as the trigger; the other customers of the batch keep reason event."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipeline.tiering.test_store import T0, World, config_with
from tierflow.pipeline.ingest.validate import ValidEvent
from tierflow.schemas.events import Purchase, Refund


@pytest.fixture
def world(redis_url: str) -> Iterator[World]:
    w = World(redis_url, config_with())
    yield w
    w.client.close()


def refund(bought: ValidEvent, ts: int) -> ValidEvent:
    order = bought.event
    assert isinstance(order, Purchase)
    return ValidEvent(Refund(event_id=f"r-{order.event_id}", user_id=order.user_id, ts=ts, channel="app",
                             order_id=order.order_id, amount=order.amount, currency="CNY"), ts)


def test_a_full_refund_takes_the_repeat_buyer_back_with_reason_refund(world: World) -> None:
    first, second = world.purchase("u1", T0), world.purchase("u1", T0 + 3_600_000)
    world.ingest([first, second, world.purchase("u2", T0)], T0 + 3_600_000)
    assert [c.new for c in world.records("u1") if c.dimension == "lifecycle"][-1] == "repeat"
    before = len(world.records("u1"))
    returned = refund(second, T0 + 7_200_000)
    world.ingest([returned, world.browse("u2", T0 + 7_200_000)], T0 + 7_200_000)
    changes = world.records("u1")[before:]
    lifecycle = [c for c in changes if c.dimension == "lifecycle"]
    assert [(c.old, c.new, c.reason) for c in lifecycle] == [("repeat", "first_purchase", "refund")]
    assert {c.reason for c in changes} == {"refund"}
    why = lifecycle[0].why
    assert why is not None and (why.event_id, why.event_type) == (returned.event.event_id, "refund")
    assert {c.reason for c in world.records("u2")} <= {"event"}
