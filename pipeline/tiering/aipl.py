"""AIPL stage per user (docs/domain.md, "AIPL"), the furthest reached:
aware (any event) -> interest (cart add or engaging interaction) ->
purchase (bought) -> loyalty (repurchased, or a buyer who advocates)."""

from __future__ import annotations

from collections.abc import Mapping

from tierflow.pipeline.tiering.config import AiplConfig

STAGES = ("aware", "interest", "purchase", "loyalty")


def _any(counts: Mapping[str, int], kinds: list[str]) -> bool:
    return any(counts.get(f"interaction:{kind}", 0) > 0 for kind in kinds)


def aipl_stage(counts: Mapping[str, int], purchases: int, config: AiplConfig) -> str | None:
    """None for a user with no event at all."""
    if purchases >= config.loyalty_min_purchases or (
        purchases > 0 and _any(counts, config.advocacy_kinds)
    ):
        return "loyalty"
    if purchases > 0:
        return "purchase"
    if counts.get("cart:add", 0) > 0 or _any(counts, config.interest_kinds):
        return "interest"
    if any(counts.get(kind, 0) > 0 for kind in ("browse", "cart", "interaction")):
        return "aware"
    return None
