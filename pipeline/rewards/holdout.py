"""Holdouts: which customers of a campaign form its control group. Pure.

A customer's arm is decided by a hash of (campaign id, user id) alone, so every
worker, replay and rebuild puts them in the same arm, and each campaign draws
its own control group. Raising a campaign's holdout_percent only moves treated
customers to control, never the other way.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["treated", "control"]
PERCENT = 100
# Buckets per percent: holdouts are set to a hundredth of a percent.
_RESOLUTION = 100
_BUCKETS = PERCENT * _RESOLUTION


def bucket(campaign_id: str, user_id: str) -> int:
    """The customer's place in [0, 10000) for this campaign, uniform over users."""
    digest = hashlib.blake2b(f"{campaign_id}\0{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def arm(campaign_id: str, user_id: str, holdout_percent: float) -> Arm:
    held = bucket(campaign_id, user_id) < round(holdout_percent * _RESOLUTION)
    return "control" if held else "treated"
