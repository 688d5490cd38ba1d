"""Settings (environment) and the domain configuration (TOML)."""
