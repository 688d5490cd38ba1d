"""`tierflow up | down | status`: the local services the pipeline runs on."""

from __future__ import annotations

import argparse

from tierflow.infra.redis import CLUSTER_NODES
from tierflow.pipeline.config.context import from_args
from tierflow.pipeline.kafka.topics import ensure_topics


def _up(args: argparse.Namespace) -> int:
    from tierflow.infra import services

    ctx = from_args(args)
    for name, address, state in services.up(ctx.settings, args.kafka_brokers, args.redis_cluster):
        print(f"{name:<11} {address:<40} {state}")
    created = ensure_topics(ctx.settings)
    if created:
        print(f"created topics: {', '.join(created)}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from tierflow.infra import services

    ctx = from_args(args)
    for name, address, state in services.down(ctx.settings):
        print(f"{name:<11} {address:<40} {state}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from tierflow.infra import services

    ctx = from_args(args)
    rows = services.status(ctx.settings)
    for name, address, state in rows:
        print(f"{name:<11} {address:<40} {state}")
    return 0 if all(state == "up" for _, _, state in rows) else 1


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start (or reuse) Kafka and Redis on loopback, create topics")
    up.add_argument("--kafka-brokers", type=int, default=1, metavar="N",
                    help="start a local KRaft cluster of N brokers (port, port+2, ...) instead of one;"
                         " use with TIERFLOW_REPLICATION")
    up.add_argument("--redis-cluster", action="store_true",
                    help=f"start a local Redis Cluster of {CLUSTER_NODES} masters on REDIS_URL's port and the"
                         " ports after it (e.g. REDIS_URL=redis://127.0.0.1:7000/0) instead of one server")
    up.set_defaults(func=_up)
    sub.add_parser("down", help="stop the services `up` started").set_defaults(func=_down)
    sub.add_parser(
        "status", help="what runs where (exit 1 if a service is down or refuses the credentials)"
    ).set_defaults(func=_status)
