"""Rolling per-customer R/F/M state: the pure summary and its Redis store."""
