"""tierflow library: settings, contracts in use, state store, pure tiering core, CLI."""
