"""Event contracts: JSON Schema files (the cross-language contract) and matching Python records."""
