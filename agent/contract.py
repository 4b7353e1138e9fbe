"""The MQTT contract: topic names and JSON payloads (see docs/mqtt-contract.md).

Every payload carries a ``schema`` name with a major version; a consumer must ignore fields it
does not know, and a breaking change bumps the version.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from agent.domain import Event

EVENT_SCHEMA = "camnet.event/1"
STATUS_SCHEMA = "camnet.status/1"
HEARTBEAT_SCHEMA = "camnet.heartbeat/1"
GAP_SCHEMA = "camnet.gap/1"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic tree of one node: ``{prefix}/{commune_id}/{node_id}/...``."""

    prefix: str
    commune_id: str
    node_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.commune_id}/{self.node_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def heartbeat(self) -> str:
        return f"{self.base}/heartbeat"

    @property
    def gaps(self) -> str:
        return f"{self.base}/gaps"

    def snapshot(self, event_id: str) -> str:
        return f"{self.base}/snapshots/{event_id}"


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _r(v: float, nd: int = 3) -> float:
    return round(float(v), nd)


def encode_event(
    event: Event, topics: Topics, seq: int, *, clock_synced: bool | None = None
) -> bytes:
    """The JSON of an event message, with the per-node ``seq`` the outbox assigned.

    ``clock_synced`` says whether the box's wall clock was synchronised when the message was
    committed (None: unknown).
    """
    return _dumps(
        {
            "schema": EVENT_SCHEMA,
            "id": event.id,
            "event_id": event.event_id,
            "seq": seq,
            "type": event.type.value,
            "rev": event.rev,
            "node_id": topics.node_id,
            "commune_id": topics.commune_id,
            "camera": event.camera,
            "label": event.label,
            "score": _r(event.score),
            "box": [_r(v, 4) for v in event.box],
            "start_ts": _r(event.start_ts),
            "end_ts": None if event.end_ts is None else _r(event.end_ts),
            "ts": _r(event.ts),
            "has_snapshot": event.has_snapshot,
            "snapshot_topic": topics.snapshot(event.event_id) if event.has_snapshot else None,
            "zones": list(event.zones),
            "entered_zones": list(event.entered_zones),
            "loitering": list(event.loitering),
            "end_reason": None if event.end_reason is None else event.end_reason.value,
            "clock_synced": clock_synced,
        }
    )


def encode_gap(
    topics: Topics,
    *,
    gap_id: str,
    seq_ranges: tuple[tuple[int, int], ...],
    snapshot_event_ids: tuple[str, ...],
    first_dropped_ts: float,
    last_dropped_ts: float,
    ts: float,
) -> bytes:
    """A ``gap`` message: what the outbox's disk bound dropped before it could be delivered."""
    return _dumps(
        {
            "schema": GAP_SCHEMA,
            "id": gap_id,
            "node_id": topics.node_id,
            "commune_id": topics.commune_id,
            "reason": "outbox_full",
            "dropped_seq": [list(r) for r in seq_ranges],
            "dropped_snapshots": list(snapshot_event_ids),
            "first_dropped_ts": _r(first_dropped_ts),
            "last_dropped_ts": _r(last_dropped_ts),
            "ts": _r(ts),
        }
    )


def encode_status(state: str, topics: Topics, **fields: Any) -> bytes:
    """A ``status`` payload: ``online`` (with details) or ``offline``."""
    return _dumps(
        {
            "schema": STATUS_SCHEMA,
            "state": state,
            "node_id": topics.node_id,
            "commune_id": topics.commune_id,
            **fields,
        }
    )


def encode_dataclass(schema: str, value: Any) -> bytes:
    """A frozen dataclass (e.g. a heartbeat) as a JSON payload with its schema name."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        raise TypeError("encode_dataclass takes a dataclass instance")
    return _dumps({"schema": schema, **dataclasses.asdict(value)})


def decode(payload: bytes) -> dict[str, Any]:
    """Parse a JSON payload (for subscribers such as ``edge-agent tail``)."""
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise TypeError("payload is not a JSON object")
    return obj
