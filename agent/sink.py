"""The event sink: renders an emission's snapshot, encodes it, commits it to the outbox.

The event and its snapshot are one outbox batch: both are stored, or neither. The per-node
``seq`` is only known inside the outbox transaction, so the batch is built by a factory.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.codec import Topics, encode_event
from agent.config import SnapshotsConfig
from agent.events import Emission
from agent.outbox import Outbox, OutMessage
from agent.snapshot import render

QOS = 1


class OutboxSink:
    """An :class:`agent.pipeline.EventSink` that writes to the durable outbox."""

    def __init__(self, outbox: Outbox, topics: Topics, snapshots: SnapshotsConfig) -> None:
        self._outbox = outbox
        self._topics = topics
        self._snapshots = snapshots

    def emit(self, emission: Emission) -> None:
        event = emission.event
        jpeg = None
        if emission.snapshot is not None:
            cfg = self._snapshots
            jpeg = render(emission.snapshot, max_width=cfg.max_width, quality=cfg.quality)

        def batch(seq: int) -> Sequence[OutMessage]:
            payload = encode_event(event, self._topics, seq)
            msgs = [
                OutMessage("event", self._topics.events, payload, QOS, event.id, event.event_id)
            ]
            if jpeg is not None:
                topic = self._topics.snapshot(event.event_id)
                msgs.append(
                    OutMessage("snapshot", topic, jpeg, QOS, f"{event.id}.jpg", event.event_id)
                )
            return msgs

        self._outbox.put(batch)
