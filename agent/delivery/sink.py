"""The event sink: renders an emission's snapshot, encodes it, commits it to the outbox.

The event, its snapshot and the change to its open visit are one outbox transaction: all are
stored, or none. The per-node ``seq`` is only known inside the outbox transaction, so the
batch is built by a factory. A snapshot that cannot be rendered does not hold the event back:
the event is committed without it (``has_snapshot`` false) and the failure is counted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2

from agent.config import SnapshotsConfig
from agent.contract import Topics, encode_event
from agent.delivery.outbox import Outbox, OutMessage
from agent.domain import EventType
from agent.errors import AgentError
from agent.node.clock import ClockSync
from agent.vision.events import Emission
from agent.vision.snapshot import render

log = logging.getLogger(__name__)

QOS = 1


@dataclass(frozen=True, slots=True)
class SinkStats:
    """What the sink committed and what failed (since this process started)."""

    committed: int
    snapshot_failures: int


class OutboxSink:
    """An :class:`agent.vision.pipeline.EventSink` that writes to the durable outbox.

    ``emit`` raises :class:`~agent.errors.OutboxError` when nothing was stored (disk full, I/O
    error); the caller then does not advance the visit and proposes it again later.
    """

    def __init__(
        self, outbox: Outbox, topics: Topics, snapshots: SnapshotsConfig, clock: ClockSync
    ) -> None:
        self._outbox = outbox
        self._topics = topics
        self._snapshots = snapshots
        self._clock = clock
        self._lock = threading.Lock()  # camera workers share one sink
        self._committed = 0
        self._snapshot_failures = 0

    def emit(self, emission: Emission) -> None:
        event = emission.event
        jpeg = None
        if emission.snapshot is not None:
            cfg = self._snapshots
            try:
                jpeg = render(emission.snapshot, max_width=cfg.max_width, quality=cfg.quality)
            except (cv2.error, ValueError, AgentError):
                log.exception("snapshot of %s failed: sending the event without it", event.id)
                with self._lock:
                    self._snapshot_failures += 1
                event = dataclasses.replace(event, has_snapshot=False)
        synced = self._clock.synced()

        def batch(seq: int) -> Sequence[OutMessage]:
            payload = encode_event(event, self._topics, seq, clock_synced=synced)
            msgs = [
                OutMessage("event", self._topics.events, payload, QOS, event.id, event.event_id)
            ]
            if jpeg is not None:
                topic = self._topics.snapshot(event.event_id)
                msgs.append(
                    OutMessage("snapshot", topic, jpeg, QOS, f"{event.id}.jpg", event.event_id)
                )
            return msgs

        closes = event.event_id if event.type is EventType.END else None
        self._outbox.put(batch, visit=emission.visit, closes=closes)
        with self._lock:
            self._committed += 1

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(self._committed, self._snapshot_failures)
