"""The `tierflow` command line. Each module in `tierflow.pipeline.cli.commands` registers
its own subcommands, so a capability brings its CLI along with it."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from tierflow.pipeline.cli import commands
from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.errors import ConfigError, TierflowError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tierflow", description="Real-time customer tiering on Kafka, Redis and ClickHouse."
    )
    parser.add_argument(
        "--config", type=Path, default=None,
        help="domain config TOML (default: $TIERFLOW_CONFIG, else built-in defaults)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"tierflow: {exc}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(f"tierflow: configuration error: {exc}", file=sys.stderr)
        return 2
    except TierflowError as exc:  # an expected failure (a service down, a failed delivery): no traceback
        print(f"tierflow: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
