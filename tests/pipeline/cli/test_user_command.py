"""`tierflow user`: a downgrade held back by grace is shown beside the evaluation, which
already names the lower tier (against the real state and tier stores of a known history)."""

from __future__ import annotations

from dataclasses import replace

from tests.pipeline.tiering.test_grace import GRACE, T0, play
from tierflow.pipeline.cli.commands.user import held_downgrades, render_text, user_document
from tierflow.pipeline.config.context import Context
from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.state.summary import DAY_MS, iso
from tierflow.pipeline.tiering.config import DowngradeConfig
from tierflow.pipeline.tiering.grace import Hold, encode_holds

LAPSE = T0 + 15 * DAY_MS  # the vip's 15-day paid membership ends


def test_a_held_membership_downgrade_is_shown_with_when_it_takes_effect(redis_url: str) -> None:
    world = play(redis_url, GRACE, replay=False, days=20)  # lapsed on day 15, held for 10 days
    try:
        ctx = Context(replace(Settings.from_env(), redis_url=redis_url), world.config)
        doc = user_document(ctx, "vip", T0 + 20 * DAY_MS, world.client)
    finally:
        world.client.close()
    assert doc["membership"]["tier"] == "super"  # the evaluation, before grace
    assert doc["held"]["membership"] == {
        "published": "88VIP", "downgrade_to": "super", "due_since": iso(LAPSE),
        "downgrade_at": iso(LAPSE + 10 * DAY_MS), "noticed": False,
    }
    assert f"held            membership 88VIP until {iso(LAPSE + 10 * DAY_MS)}, then super" in render_text(doc)


def test_no_hold_nothing_held() -> None:
    rules = DowngradeConfig(membership_grace_days=10, segment_grace_days=6, notice_days=3)
    assert held_downgrades({"holds": None, "v:membership": "88VIP"}, {"membership": "88VIP"}, rules) == {}
    stored = {"holds": encode_holds({"segment": Hold(T0, noticed=True)}), "v:segment": "important_value"}
    assert held_downgrades(stored, {"segment": "general_value"}, rules) == {"segment": {
        "published": "important_value", "downgrade_to": "general_value", "due_since": iso(T0),
        "downgrade_at": iso(T0 + 6 * DAY_MS), "noticed": True}}
