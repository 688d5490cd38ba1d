"""Send events to the input topics: routed by type, keyed by user, optionally
batched per user (the SDK batching that wins throughput)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson
from confluent_kafka import KafkaError, Message

from tierflow.pipeline.config.settings import Settings
from tierflow.pipeline.kafka import clients
from tierflow.schemas.events import TOPIC_OF


@dataclass
class ProduceReport:
    lines: int = 0
    records: int = 0
    events: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class EventSender:
    """Buffers events per user and sends them as single or batch records."""

    def __init__(self, settings: Settings, batch: int = 1) -> None:
        self.settings = settings
        self.batch = batch
        self.producer = clients.producer(settings.kafka, bulk=True)
        self.report = ProduceReport()
        self.pending: dict[str, list[bytes]] = {}
        self.pending_type: dict[str, str] = {}

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.report.delivered += 1
        else:
            self.report.failed += 1
            if len(self.report.errors) < 10:
                self.report.errors.append(str(err))

    def _send(self, topic_type: str, user_id: str, value: bytes, events: int) -> None:
        while True:
            try:
                self.producer.produce(
                    self.settings.topics.input(topic_type), key=user_id.encode(), value=value,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:  # local queue full: let librdkafka drain it
                self.producer.poll(0.1)
        self.producer.poll(0)
        self.report.records += 1
        self.report.events += events

    def _flush_user(self, user_id: str) -> None:
        events = self.pending.pop(user_id)
        topic_type = self.pending_type.pop(user_id)
        if len(events) == 1:
            self._send(topic_type, user_id, events[0], 1)
        else:
            self._send(topic_type, user_id, b'{"events":[' + b",".join(events) + b"]}", len(events))

    def send_raw(self, line_no: int, raw: bytes) -> None:
        """One JSON event as bytes; lines that cannot be routed are reported, not sent."""
        self.report.lines += 1
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.report.skipped.append((line_no, f"not JSON: {exc}"))
            return
        if not isinstance(doc, dict):
            self.report.skipped.append((line_no, "not a JSON object"))
            return
        event_type, user_id = doc.get("type"), doc.get("user_id")
        if event_type not in TOPIC_OF or not isinstance(user_id, str) or not user_id:
            self.report.skipped.append((line_no, "needs a known 'type' and a 'user_id' to route"))
            return
        self.send(event_type, user_id, raw)

    def send(self, event_type: str, user_id: str, raw: bytes) -> None:
        """One event of `event_type`, to its type's input topic (a refund to its order's)."""
        topic_type = TOPIC_OF[event_type]
        if self.batch <= 1:
            self._send(topic_type, user_id, raw, 1)
            return
        self.pending.setdefault(user_id, []).append(raw)
        self.pending_type.setdefault(user_id, topic_type)
        if len(self.pending[user_id]) >= self.batch:
            self._flush_user(user_id)

    def close(self, timeout: float = 60.0) -> ProduceReport:
        for user_id in list(self.pending):
            self._flush_user(user_id)
        remaining = self.producer.flush(timeout)
        self.report.failed += remaining
        return self.report


def send_lines(sender: EventSender, lines: Iterable[bytes], on_line: Callable[[int], None]) -> ProduceReport:
    """Send JSONL lines; `on_line(n)` after each (progress)."""
    for count, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped:
            sender.send_raw(count, stripped)
        on_line(count)
    return sender.close()
