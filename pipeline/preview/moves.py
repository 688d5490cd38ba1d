"""The pure core of a preview: who moves where per dimension, and what the tier-triggered
reward rules would spend on the moves. No I/O."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from tierflow.pipeline.rewards.catalogue import needs
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.rules import match_tier_change
from tierflow.pipeline.tiering.evaluate import TRACKED, Evaluation
from tierflow.schemas.tier_changes import ChangeScores, TierChange

Value = str | None


@dataclass
class Moves:
    """Per dimension, users by (value now, value under the new configuration); the diagonal
    is who stays."""

    cells: dict[str, Counter[tuple[Value, Value]]] = field(
        default_factory=lambda: {dim: Counter() for dim in TRACKED})

    def add(self, dimension: str, old: Value, new: Value) -> None:
        self.cells[dimension][(old, new)] += 1

    def moved(self, dimension: str) -> int:
        return sum(n for (old, new), n in self.cells[dimension].items() if old != new)

    def to_json(self) -> dict[str, object]:
        return {
            dim: {"moved": self.moved(dim),
                  "matrix": [{"from": old, "to": new, "users": n}
                             for (old, new), n in sorted(cells.items(), key=lambda kv: _order(*kv[0]))]}
            for dim, cells in self.cells.items()
        }


def _order(old: Value, new: Value) -> tuple[bool, str, bool, str]:
    """No value first, then by name."""
    return (old is not None, old or "", new is not None, new or "")


@dataclass
class CampaignSpend:
    grants: int = 0
    cost_cents: int = 0


@dataclass
class Budget:
    """What the tier-triggered rules would grant for the moves, per campaign, within each
    rule's per-user limit (before the campaign's budget, stock and pools: see `report`)."""

    campaigns: dict[str, CampaignSpend] = field(default_factory=lambda: defaultdict(CampaignSpend))

    def add(self, rewards: RewardsConfig, change: TierChange, granted: dict[str, int]) -> None:
        """`granted`: the user's grants so far per rule (their `{u:ID}:rw:n` counts), counted
        on as this change's grants are made."""
        for intent in match_tier_change(rewards, change):
            limit = rewards.rules[intent.rule_id].per_user
            if intent.held_out:
                continue  # the campaign's control group receives nothing
            if limit > 0 and granted.get(intent.rule_id, 0) >= limit:
                continue
            granted[intent.rule_id] = granted.get(intent.rule_id, 0) + 1
            spend = self.campaigns[intent.campaign_id]
            spend.grants += 1
            spend.cost_cents += needs(intent.prize_id, rewards.prizes, rewards.point_value_cents).cost_cents

    def report(self, left_cents: Mapping[str, int | None]) -> dict[str, object]:
        """With each campaign's budget left (None: unlimited): what would be spent within it."""
        campaigns: dict[str, dict[str, int | None]] = {}
        for cid, spend in sorted(self.campaigns.items()):
            left = left_cents.get(cid)
            within = spend.cost_cents if left is None else min(spend.cost_cents, max(0, left))
            campaigns[cid] = {"grants": spend.grants, "cost_cents": spend.cost_cents, "left_cents": left,
                              "within_budget_cents": within}
        return {"campaigns": campaigns,
                "cost_cents": sum(c["within_budget_cents"] or 0 for c in campaigns.values())}


def change_of(user_id: str, dimension: str, old: Value, new: Value, version: int, after: Evaluation,
              event_time: str) -> TierChange:
    """The change record the re-evaluation would publish (what the reward rules read)."""
    scores = after.scores
    return TierChange(
        user_id=user_id, dimension=dimension, old=old, new=new, version=version, seq=version,  # type: ignore[arg-type]
        reason="config_change",
        scores=ChangeScores(scores.r, scores.f, scores.m) if scores else ChangeScores(None, None, None),
        points=after.membership.points, repurchases=after.lifecycle.repurchases, event_time=event_time,
    )
