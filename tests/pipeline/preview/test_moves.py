"""The pure core of a preview: the from -> to matrices and the budget of the tier-triggered
rules, within per-user limits and campaign budgets."""

from __future__ import annotations

from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.preview.moves import Budget, Moves
from tierflow.schemas.tier_changes import ChangeScores, TierChange


def change(user: str, new: str, version: int = 1) -> TierChange:
    return TierChange(user_id=user, dimension="membership", old="ordinary", new=new, version=version, seq=version,
                      reason="config_change", scores=ChangeScores(3, 3, 3), points=1200, repurchases=2,
                      event_time="2026-12-01T00:00:00Z")


def test_the_matrix_counts_stayers_and_movers_apart() -> None:
    moves = Moves()
    for old, new in (("a", "a"), ("a", "b"), ("a", "b"), (None, "a")):
        moves.add("segment", old, new)
    doc = moves.to_json()["segment"]
    assert doc == {"moved": 3, "matrix": [{"from": None, "to": "a", "users": 1}, {"from": "a", "to": "a", "users": 1},
                                          {"from": "a", "to": "b", "users": 2}]}
    assert moves.moved("lifecycle") == 0


def test_the_budget_counts_each_rule_within_its_per_user_limit_and_the_budget_left() -> None:
    rewards = load_config().rewards
    rule = next(rid for rid, r in rewards.rules.items() if getattr(r.trigger, "entered", None) == "super")
    campaign = rewards.rules[rule].campaign
    budget = Budget()
    budget.add(rewards, change("u1", "super"), {})
    budget.add(rewards, change("u2", "super"), {rule: rewards.rules[rule].per_user})  # at its limit already
    granted: dict[str, int] = {}
    budget.add(rewards, change("u3", "super", 1), granted)
    budget.add(rewards, change("u3", "super", 2), granted)  # the second entry in one run: over the limit of 1
    spend = budget.campaigns[campaign]
    assert spend.grants == 2 and spend.cost_cents > 0
    report = budget.report({campaign: spend.cost_cents // 2})
    assert report["campaigns"][campaign]["within_budget_cents"] == spend.cost_cents // 2  # type: ignore[index]
    assert report["cost_cents"] == spend.cost_cents // 2
    assert budget.report({})["cost_cents"] == spend.cost_cents  # unlimited
