"""The reward programme as of a time: per campaign budget, inventory, pools and
redemptions; grants by type; points liability; envelopes. Pure: folds in what
the ledger read from Redis, one user at a time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from tierflow.pipeline.rewards import catalogue, rules
from tierflow.pipeline.rewards.config import RewardsConfig
from tierflow.pipeline.rewards.wallet import Balances, RawWallet, balances, items_of
from tierflow.pipeline.state.summary import iso
from tierflow.schemas.reward_grants import RewardRecord


@dataclass(frozen=True, slots=True)
class RawCampaign:
    hash: dict[str, str]
    reservations: int
    stock_used: dict[str, str]
    pool_left: dict[str, int]


@dataclass
class _Campaign:
    grants: int = 0
    redemptions: int = 0
    discount_cents: int = 0
    order_cents: int = 0


@dataclass
class ReportBuilder:
    """Folds users in one at a time, so a report never holds every wallet at once."""

    config: RewardsConfig
    now_ms: int
    users: int = 0
    by_prize_type: Counter[str] = field(default_factory=Counter)
    by_item_type: Counter[str] = field(default_factory=Counter)
    campaigns: dict[str, _Campaign] = field(default_factory=dict)
    totals: Balances = field(default_factory=Balances)

    def _campaign(self, cid: str) -> _Campaign:
        return self.campaigns.setdefault(cid, _Campaign())

    def add_user(self, raw: RawWallet, grants: Iterable[RewardRecord]) -> None:
        """`grants`: the records of every grant the user received (cancellations included)."""
        self.users += 1
        for record in grants:
            if record.kind == "grant":
                self.by_prize_type[record.prize_type or ""] += 1
                self._campaign(record.campaign or "").grants += 1
        items = items_of(raw)
        self.by_item_type.update(i.type for i in items)
        for detail in raw.redemptions.values():
            r = orjson.loads(detail)
            c = self._campaign(r["campaign"])
            c.redemptions += 1
            c.discount_cents += r["discount_cents"]
            c.order_cents += r["order_cents"]
        b = balances(raw, items, self.now_ms)
        self.totals.points += b.points
        self.totals.points_expired_unswept += b.points_expired_unswept
        self.totals.pending_cents += b.pending_cents
        self.totals.matured_cents += b.matured_cents
        self.totals.withdrawn_cents += b.withdrawn_cents

    def build(self, raw_campaigns: Mapping[str, RawCampaign]) -> dict[str, object]:
        cfg = self.config
        campaigns = {}
        for cid, campaign in cfg.campaigns.items():
            raw = raw_campaigns[cid]
            spent = int(raw.hash.get("spent", "0"))
            seen = self._campaign(cid)
            inventory, pools = {}, {}
            for pid in stocked_prizes(cfg, cid):
                prize = cfg.prizes[pid]
                if isinstance(prize, catalogue.UniversalCode):
                    minted = f"minted:{pid}" in raw.hash
                    pools[pid] = {"code": prize.code, "size": prize.count,
                                  "left": raw.pool_left[pid] if minted else prize.count}
                else:
                    limit = prize.stock  # type: ignore[union-attr]
                    used = int(raw.stock_used.get(pid, "0"))
                    inventory[pid] = {"stock": limit, "used": used, "left": limit - used}
            campaigns[cid] = {
                "name": campaign.name,
                "enabled": campaign.enabled,
                "active": rules.campaign_active(campaign, self.now_ms),
                "budget_cents": campaign.budget_cents,
                "spent_cents": spent,
                "left_cents": None if campaign.budget_cents is None else campaign.budget_cents - spent,
                "reservations": raw.reservations,
                "grants": seen.grants,
                "denied": {why: int(raw.hash.get(f"denied:{why}", "0")) for why in ("budget", "stock", "pool")},
                "inventory": inventory,
                "pools": pools,
                "redemptions": seen.redemptions,
                "discount_cents": seen.discount_cents,
                "redeemed_order_cents": seen.order_cents,
            }
        t = self.totals
        return {
            "as_of": iso(self.now_ms),
            "users": self.users,
            "campaigns": campaigns,
            "grants_by_prize_type": dict(sorted(self.by_prize_type.items())),
            "items_by_type": dict(sorted(self.by_item_type.items())),
            "points": {"outstanding": t.points, "liability_cents": t.points * cfg.point_value_cents,
                       "expired_unswept": t.points_expired_unswept},
            "envelopes": {"pending_cents": t.pending_cents, "available_cents": t.available_cents,
                          "withdrawn_cents": t.withdrawn_cents},
        }


def stocked_prizes(config: RewardsConfig, campaign_id: str) -> list[str]:
    """Prizes with finite stock or a code pool granted by a campaign's rules."""
    found: dict[str, None] = {}
    for rule in config.rules.values():
        if rule.campaign == campaign_id:
            for component in catalogue.flatten(rule.prize, config.prizes):
                if catalogue.stocked(component.prize):
                    found[component.prize_id] = None
    return list(found)
