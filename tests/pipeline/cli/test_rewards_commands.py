"""`tierflow code claim`, `tierflow wallet` and `tierflow rewards` run as a user
runs them: a subprocess against real Redis, checked by exit status and JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.paths import ROOT
from tierflow.pipeline.config.domain import load_config
from tierflow.pipeline.rewards.engine import RewardEngine
from tierflow.pipeline.state.store import connect
from tierflow.schemas.events import Interaction

NOW = "2026-04-23T12:00:00Z"
NOW_MS = 1_776_945_600_000
DAY_MS = 86_400_000


def tierflow(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIERFLOW_CONFIG"}
    env.update(REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tierflow.pipeline.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def test_claim_then_claim_again(redis_url: str) -> None:
    first = tierflow(redis_url, "code", "claim", "new666", "--user", "alice", "--json", "--as-of", NOW)
    assert first.returncode == 0, first.stderr
    doc = as_json(first)
    assert doc["status"] == "granted" and doc["user_id"] == "alice"
    coupon = doc["coupon"]
    assert re.fullmatch(r"NEW666-\d{3}", coupon["item_id"])
    assert coupon["code"] == "NEW666" and coupon["terms"]["off_cents"] == 600
    assert coupon["terms"]["valid_from_ms"] == NOW_MS

    again = tierflow(redis_url, "code", "claim", "NEW666", "--user", "alice", "--json")
    assert again.returncode == 5
    assert as_json(again)["status"] == "already_claimed"
    assert as_json(again)["coupon"]["item_id"] == coupon["item_id"]
    assert "already claimed" in again.stderr

    text = tierflow(redis_url, "code", "claim", "NEW666", "--user", "bob")
    assert text.returncode == 0 and re.search(r"bob claimed NEW666: coupon NEW666-\d{3}", text.stdout)


def test_unknown_code(redis_url: str) -> None:
    result = tierflow(redis_url, "code", "claim", "OLD777", "--user", "alice")
    assert result.returncode == 3
    assert "unknown code 'OLD777'" in result.stderr and result.stdout == ""


def test_exhausted_pool_and_inactive_campaign(redis_url: str, tmp_path: Path) -> None:
    small = tmp_path / "small.toml"
    small.write_text("[rewards.prizes.new666]\ncount = 2\n")
    codes = [tierflow(redis_url, "--config", str(small), "code", "claim", "NEW666", "--user", f"u{i}", "--json")
             for i in range(3)]
    assert [c.returncode for c in codes] == [0, 0, 4]
    assert sorted(as_json(c)["coupon"]["item_id"] for c in codes[:2]) == ["NEW666-001", "NEW666-002"]
    assert as_json(codes[2]) == {"status": "exhausted", "code": "NEW666", "user_id": "u2", "coupon": None,
                                 "record_id": None}
    assert "exhausted" in codes[2].stderr

    ended = tmp_path / "ended.toml"
    ended.write_text("[rewards.campaigns.new_customer]\nend = 2020-01-01T00:00:00Z\n")
    late = tierflow(redis_url, "--config", str(ended), "code", "claim", "NEW666", "--user", "u9")
    assert late.returncode == 6 and "not running" in late.stderr


def test_bad_config_is_reported_with_the_rule(redis_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[rewards.rules.new666_claim]\nprize = "gone"\n')
    result = tierflow(redis_url, "--config", str(broken), "rewards")
    assert result.returncode == 2
    assert "rule 'new666_claim': unknown prize 'gone'" in result.stderr


def seed(redis_url: str) -> None:
    """Rewards as the worker would grant them: a tier upgrade and two accepted invites."""
    engine = RewardEngine(connect(redis_url), load_config().rewards)
    engine.on_tier_change({"user_id": "carol", "dimension": "membership", "old": "ordinary", "new": "super",
                           "version": 1, "seq": 1, "reason": "event", "scores": {"r": 5, "f": 4, "m": 5},
                           "points": 2000, "repurchases": 1, "event_time": NOW}, NOW_MS)
    for n in (1, 2):
        invite = Interaction(event_id=f"inv{n}", user_id="carol", ts=NOW_MS, channel="app",
                             kind="referral_accept", target=f"f{n}")
        engine.on_event(invite, NOW_MS, NOW_MS)


def test_wallet_json(redis_url: str) -> None:
    seed(redis_url)
    assert tierflow(redis_url, "code", "claim", "NEW666", "--user", "carol", "--as-of", NOW).returncode == 0
    week = tierflow(redis_url, "wallet", "carol", "--json", "--as-of", "2026-04-30T12:00:00Z")
    assert week.returncode == 0, week.stderr
    doc = as_json(week)
    assert doc["user_id"] == "carol" and doc["as_of"] == "2026-04-30T12:00:00Z"
    kinds = sorted((c["type"], c["prize"], c["status"]) for c in doc["coupons"])
    assert kinds == [("coupon", "new666", "active"), ("coupon", "super_coupon", "active"),
                     ("referral_coupon", "referral_coupon", "active")]
    assert doc["points"]["balance"] == 2000
    assert doc["points"]["lots"][0]["expires_at"] == "2027-04-23T12:00:00Z"
    assert (doc["envelopes"]["pending_cents"], doc["envelopes"]["available_cents"]) == (1000, 0)
    assert [g["right"] for g in doc["goods"]] == ["vip_30d"]
    paid_out = as_json(tierflow(redis_url, "wallet", "carol", "--json", "--as-of", "2026-05-01T12:00:00Z"))
    assert paid_out["envelopes"]["available_cents"] == 1000 and paid_out["envelopes"]["withdrawable"] is True
    text = tierflow(redis_url, "wallet", "carol", "--as-of", "2026-04-30T12:00:00Z").stdout
    assert "points: 2,000" in text and "pending 10.00" in text


def test_rewards_json(redis_url: str) -> None:
    seed(redis_url)
    result = tierflow(redis_url, "rewards", "--json", "--as-of", NOW)
    assert result.returncode == 0, result.stderr
    doc = as_json(result)
    vip = doc["campaigns"]["vip_upgrade"]
    assert (vip["budget_cents"], vip["spent_cents"], vip["left_cents"], vip["grants"]) == (
        2_000_000, 6500, 2_000_000 - 6500, 1)
    referral = doc["campaigns"]["referral"]
    assert referral["spent_cents"] == 500 + 2 * 500
    assert doc["campaigns"]["summer_event"]["inventory"] == {"tote_bag": {"stock": 200, "used": 0, "left": 200}}
    assert doc["campaigns"]["new_customer"]["pools"] == {"new666": {"code": "NEW666", "size": 100, "left": 100}}
    assert doc["grants_by_prize_type"] == {"cash_envelope": 2, "gift_pack": 1, "referral_coupon": 1}
    assert doc["points"] == {"outstanding": 2000, "liability_cents": 2000, "expired_unswept": 0}
    assert doc["envelopes"] == {"pending_cents": 1000, "available_cents": 0, "withdrawn_cents": 0}
    text = tierflow(redis_url, "rewards", "--as-of", NOW).stdout
    assert re.search(r"vip_upgrade\s+20,000\.00\s+65\.00\s+19,935\.00\s+1\b", text)


@pytest.mark.parametrize("command", [["wallet", "x"], ["rewards"], ["code", "claim", "NEW666", "--user", "x"]])
def test_unreachable_redis_is_a_clear_error(command: list[str]) -> None:
    result = tierflow("redis://127.0.0.1:1/0", *command)
    assert result.returncode == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
