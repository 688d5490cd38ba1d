"""The worker's stages, one module per stage: ingest (validate + state) -> tiers -> rewards -> archive."""
