"""`tierflow demo`: the whole pipeline on local services with a synthetic population.

Brings Kafka and Redis up, starts a worker process, streams a realistic
population with live progress, waits until the worker has processed
everything, prints what the pipeline now knows, and stops the worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from tierflow.pipeline.cli.errors import CliError
from tierflow.pipeline.cli.progress import progress
from tierflow.pipeline.config.context import Context, from_args
from tierflow.pipeline.demo.synth import Population
from tierflow.pipeline.kafka import lag
from tierflow.pipeline.state.store import StateStore, connect
from tierflow.pipeline.state.summary import summarize

# Events sent between two looks at the worker (is it still alive?) and the progress bar.
WORKER_CHECK_EVERY = 5000


def start_worker(ctx: Context, log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tierflow.pipeline.cli.main"]
    if ctx.settings.config_path is not None:
        command += ["--config", str(ctx.settings.config_path)]
    return subprocess.Popen(
        [*command, "worker", "--loglevel", "warning"],
        stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def stream(ctx: Context, population: Population, batch: int, worker: subprocess.Popen) -> int:
    from tierflow.pipeline.kafka.sender import EventSender

    sender = EventSender(ctx.settings, batch=batch)
    with progress("streaming events") as show:
        for sent, event in enumerate(population.events(), start=1):
            sender.send(str(event["type"]), str(event["user_id"]), orjson.dumps(event))
            if sent % WORKER_CHECK_EVERY == 0:
                show(sent)
                if worker.poll() is not None:
                    raise CliError("the worker stopped unexpectedly; see its log", 1)
        report = sender.close()
        show(report.events)
    print(f"streamed {report.events:,} events in {report.records:,} records")
    if report.failed:
        raise CliError(f"{report.failed} records were not delivered: {report.errors[:3]}", 1)
    return report.events


def wait_for_worker(ctx: Context, worker: subprocess.Popen, timeout: float) -> None:
    backlog = sum(row.lag for row in lag.measure(ctx.settings))
    with progress("worker processing records", backlog or None) as show:

        def on_remaining(remaining: int) -> None:
            if worker.poll() is not None:
                raise CliError("the worker stopped unexpectedly; see its log", 1)
            show(max(backlog - remaining, 0))

        try:
            lag.wait(ctx.settings, timeout, on_remaining)
        except TimeoutError as exc:
            raise CliError(str(exc), 1) from exc
    print("the worker has processed every record")


def summary_lines(ctx: Context, population: Population, now_ms: int) -> list[str]:
    store = StateStore(connect(ctx.settings.redis_url), ctx.config.state.retention_days)
    windows = ctx.config.state.windows_days
    buyers = 0
    purchases = 0
    revenue_cents = 0
    recent: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    personas: Counter[str] = Counter()
    for user_id, persona in population.persona_of.items():
        raw = store.read(user_id)
        if raw is None:
            continue
        personas[persona.name] += 1
        s = summarize(user_id, raw, now_ms, windows, ctx.config.state.retention_days)
        channels.update(s.channels)
        if s.frequency["lifetime"]:
            buyers += 1
            purchases += s.frequency["lifetime"]
            revenue_cents += s.monetary_cents["lifetime"]
            for cat, v in s.categories.items():
                categories[cat] += round(v["amount"] * 100)
            for window in windows:
                if s.frequency[f"{window}d"]:
                    recent[f"{window}d"] += 1
    known = sum(personas.values())
    lines = [
        "",
        "What the pipeline knows now",
        f"  customers        {known:,} ({', '.join(f'{n} {k}' for k, n in personas.most_common())})",
        f"  buyers           {buyers:,} with {purchases:,} purchases, revenue {revenue_cents / 100:,.2f} CNY",
        "  active buyers    " + ", ".join(f"{n:,} in the last {w}" for w, n in recent.items()),
        "  top categories   " + ", ".join(f"{c} {v / 100:,.0f}" for c, v in categories.most_common(4)),
        "  channels         " + ", ".join(f"{c} {n:,}" for c, n in channels.most_common()),
    ]
    return lines


def claim_codes(ctx: Context, population: Population, now_ms: int, limit: int) -> str:
    """New visitors scan the NEW666 poster: each gets one random coupon of the pool."""
    from tierflow.pipeline.rewards.engine import RewardEngine

    engine = RewardEngine(connect(ctx.settings.redis_url), ctx.config.rewards)
    visitors = [u for u, p in population.persona_of.items() if p.name == "new_visitor"][:limit]
    outcomes = Counter(engine.claim_code("NEW666", user, now_ms).status for user in visitors)
    return ", ".join(f"{n} {status}" for status, n in outcomes.most_common())


def wait_for_archive(ctx: Context, timeout: float) -> None:
    """The archive is its own consumer group; let it catch up before reading ClickHouse."""
    from dataclasses import replace

    from tierflow.agents.archive import archive_group

    try:
        lag.wait(replace(ctx.settings, group_id=archive_group(ctx)), timeout)
    except TimeoutError:
        sys.stderr.write("archive is still catching up; AIPL figures may be partial\n")


def final_reports(ctx: Context, now_ms: int) -> list[str]:
    """Tiers, rewards and the AIPL funnel, as `segments`, `rewards` and `aipl` print them."""
    from tierflow.pipeline.archive import aipl
    from tierflow.pipeline.archive.handle import Archive
    from tierflow.pipeline.cli.commands.archive import render as render_aipl
    from tierflow.pipeline.cli.commands.rewards import render_report
    from tierflow.pipeline.cli.commands.tiers import render_segments
    from tierflow.pipeline.rewards.engine import RewardEngine
    from tierflow.pipeline.tiering.store import TierStore

    client = connect(ctx.settings.redis_url)
    lines = ["", "Tiers (tierflow segments)", render_segments(TierStore(client, ctx.config).report()),
             "", "Rewards (tierflow rewards)", render_report(RewardEngine(client, ctx.config.rewards).report(now_ms))]
    archive = Archive(ctx.settings, ctx.config.archive)
    try:
        funnel = aipl.report(archive.backend(), None, None, None)
        lines += ["", "AIPL funnel (tierflow aipl)", render_aipl(funnel, None)]
    finally:
        archive.close()
    return lines


def _demo(args: argparse.Namespace) -> int:
    from tierflow.infra import services
    from tierflow.pipeline.demo.livefeed import LiveFeed
    from tierflow.pipeline.kafka.topics import ensure_topics

    ctx = from_args(args)
    print("tierflow demo: starting services")
    for name, address, state in services.up(ctx.settings):
        print(f"  {name:<11} {address:<40} {state}")
    ensure_topics(ctx.settings)
    log_path = ctx.settings.home / "demo-worker.log"
    worker = start_worker(ctx, log_path)
    print(f"  worker      pid {worker.pid}, log {log_path}")
    now_ms = int(time.time() * 1000)
    population = Population(args.users, args.days, now_ms, seed=args.seed, run=f"demo{now_ms}")
    feed = LiveFeed(ctx.settings)
    feed.start()
    print("live tier changes and reward grants (a sample):")
    try:
        events = stream(ctx, population, args.batch, worker)
        print(f"  code NEW666 claimed by new visitors: {claim_codes(ctx, population, now_ms, 30)}")
        wait_for_worker(ctx, worker, args.timeout)
        # Give the timer a moment: the means snapshot and its sweep follow the stream.
        time.sleep(ctx.config.tiering.population.snapshot_interval_ms / 1000 + 2)
        wait_for_archive(ctx, args.timeout)
        feed.stop()
        print(f"\n{feed.counts['tier']:,} tier changes and {feed.counts['reward']:,} reward records published")
        for line in summary_lines(ctx, population, now_ms):
            print(line)
    finally:
        feed.stop()
        stop_worker(worker)
    # The worker held the embedded ClickHouse directory; now the demo may open it.
    for line in final_reports(ctx, now_ms):
        print(line)
    print(f"\n{events:,} events processed. Try: tierflow user c000001, tierflow dashboard "
          "(services keep running; `tierflow down` stops them)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the pipeline end to end on a synthetic population")
    parser.add_argument("--users", type=int, default=2000, help="customers to simulate (default 2000)")
    parser.add_argument("--days", type=int, default=180, help="days of history (default 180)")
    parser.add_argument("--batch", type=int, default=10, help="events per batch record (default 10)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the worker")
    parser.set_defaults(func=_demo)
