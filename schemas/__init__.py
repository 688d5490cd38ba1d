"""The contracts: one msgspec type per topic record (events, dead_letters,
tier_changes, reward_grants) and the JSON Schema files generated from them
(`python -m tierflow.schemas`; see generate.py)."""
