"""CLI subcommands. Every module here defines `register(subparsers)`; each
parser sets `func(args) -> int` (the exit status)."""
