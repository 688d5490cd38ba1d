"""Rewards: prize catalogue, rules, redemption (pure) and the Redis ledger and engine (effects)."""
