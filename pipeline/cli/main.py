"""The `tierflow` command line. Each module in `tierflow.pipeline.cli.commands` registers
its own subcommands, so a capability brings its CLI along with it."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from importlib import metadata
from pathlib import Path

import redis
from confluent_kafka import KafkaException

from tierflow.pipeline.cli import commands
from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.config.settings import KAFKA_LOG, Settings
from tierflow.pipeline.errors import ConfigError, TierflowError

# Shell conventions: 2 for usage errors, 128 + the signal for SIGINT and SIGPIPE.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def _version() -> str:
    try:
        return metadata.version("tierflow")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tierflow", description="Real-time customer tiering on Kafka, Redis and ClickHouse."
    )
    parser.add_argument(
        "--config", type=Path, default=None,
        help="domain config TOML (default: $TIERFLOW_CONFIG, else built-in defaults)",
    )
    parser.add_argument("--version", action="version", version=f"tierflow {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # Kafka clients' own lines reach a configured log (the worker's), never a command's
    # stderr, where a failure is reported once, as one line.
    KAFKA_LOG.addHandler(logging.NullHandler())
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
    except (KafkaException, redis.RedisError) as exc:  # a service down or refusing us: one line naming it
        from tierflow.infra.services import explain

        print(f"tierflow: {explain(exc, Settings.from_env())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`tierflow lag | head -1`): stop quietly, and keep the
        # interpreter from complaining while it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
