"""The `tierflow` command line."""
