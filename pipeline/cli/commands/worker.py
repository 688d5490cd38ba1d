"""`tierflow worker`: run every pipeline stage in one process (scale out by starting more)."""

from __future__ import annotations

import argparse
import gc
import logging
import logging.config

from tierflow.pipeline.config.context import from_args
from tierflow.pipeline.config.settings import LOG_FORMATS
from tierflow.pipeline.kafka.topics import ensure_topics


def _worker(args: argparse.Namespace) -> int:
    # The runtime (Faust) is heavy to import; only the worker needs it.
    from tierflow.agents.app import create_app
    from tierflow.agents.lifecycle import ready_to_start, scrubber
    from tierflow.agents.logs import Repeats, Worker, logging_config

    ctx = from_args(args)
    repeats = Repeats(ctx.config.worker.log_repeats_s)
    log_config = logging_config(args.log_format or ctx.settings.log_format, args.loglevel, scrubber(ctx.settings))
    if log_config is not None:
        logging.config.dictConfig(log_config)  # the lines before Faust starts too
        logging.captureWarnings(True)  # Python's warnings as log lines too, not raw text between them
        for handler in logging.getLogger().handlers:
            handler.addFilter(repeats)
    # Ingest allocates many short-lived, cycle-free objects; frequent gen-0 sweeps cost ~10%.
    gc.set_threshold(50_000, 20, 100)
    if not ready_to_start(ctx.settings, ctx.config.worker.restart_backoff_s):
        return 0  # stopped while waiting for Kafka: nothing had started
    ensure_topics(ctx.settings)
    app = create_app(ctx)
    worker = Worker(app, loglevel=args.loglevel, quiet=True, logging_config=log_config, repeats=repeats)
    logging.getLogger("tierflow").setLevel(args.loglevel.upper())
    worker.execute_from_commandline()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("worker", help="run the streaming worker (ingest, tiers, rewards, archive, web)")
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default=None,
        help="text (default) or json: one JSON object per line (default: $TIERFLOW_LOG_FORMAT, else text)",
    )
    parser.set_defaults(func=_worker)
