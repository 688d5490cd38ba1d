"""Rewards: prizes granted when users enter tiers, when events match rules and
when codes are claimed; coupons redeemed on purchases; points, cash and goods.

Pure decisions: config (the `[rewards]` section), catalogue (prizes and the
items they issue), rules (which rules fire), redeem (does a coupon apply),
wallet and report (views over what is stored).
Effects: ledger.py and the Lua scripts beside it (the only Redis writes).
Between them, one unit per business action: granting (incl. referral
step-ups), redemption, claims, points, account (cash withdrawal, shipping
address), views and outbox; engine.py is the facade the runtime and CLI hold.
"""
