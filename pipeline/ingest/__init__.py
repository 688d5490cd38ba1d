"""Ingest: decode and validate records, dead letters for what is invalid."""
