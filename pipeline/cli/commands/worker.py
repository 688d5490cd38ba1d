"""`tierflow worker`: run every pipeline stage in one process (scale out by starting more)."""

from __future__ import annotations

import argparse
import gc
import logging

from tierflow.pipeline.config.context import from_args
from tierflow.pipeline.kafka.topics import ensure_topics


def _worker(args: argparse.Namespace) -> int:
    # Faust is heavy to import; only the worker needs it.
    import faust

    from tierflow.agents.app import create_app
    from tierflow.agents.lifecycle import ready_to_start

    ctx = from_args(args)
    # Ingest allocates many short-lived, cycle-free objects; frequent gen-0 sweeps cost ~10%.
    gc.set_threshold(50_000, 20, 100)
    if not ready_to_start(ctx.settings, ctx.config.worker.restart_backoff_s):
        return 0  # stopped while waiting for Kafka: nothing had started
    ensure_topics(ctx.settings)
    app = create_app(ctx)
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True)
    logging.getLogger("tierflow").setLevel(args.loglevel.upper())
    worker.execute_from_commandline()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("worker", help="run the streaming worker (ingest, tiers, rewards, archive, web)")
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=_worker)
