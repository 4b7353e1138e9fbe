"""Outbox enqueue rate: committed ``put`` batches per second, as the camera worker does them.

One event per batch (its JSON built with the seq, through a batch factory), optionally with
a real ~40 KB snapshot JPEG in the same batch; ``synchronous`` FULL and NORMAL; a fresh
SQLite file for each combination, in a temporary folder on the same disk as the results.
The four combinations take turns in rounds, so a burst of disk activity from other work on
the machine does not land on one of them only.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from agent.config import OutboxConfig
from agent.contract import Topics, encode_event
from agent.domain import Event, EventType
from bench.common import rate

OUTBOX_IMPORT_ERROR = ""
outbox_module: ModuleType | None
try:  # the outbox is written in parallel with the benchmark: skip its section if absent
    from agent.delivery import outbox as _imported

    outbox_module = _imported
except ImportError as exc:
    outbox_module = None
    OUTBOX_IMPORT_ERROR = str(exc)

Sync = Literal["FULL", "NORMAL"]
MODES: tuple[tuple[Sync, bool], ...] = (
    ("FULL", False),
    ("FULL", True),
    ("NORMAL", False),
    ("NORMAL", True),
)
TOPICS = Topics("camnet", "bench-commune", "bench-node")


def outbox_api_problem() -> str | None:
    """Why the outbox cannot be benchmarked here, or None when its API is the expected one."""
    outbox = outbox_module
    if outbox is None:
        return f"agent.delivery.outbox cannot be imported: {OUTBOX_IMPORT_ERROR}"
    cls = getattr(outbox, "Outbox", None)
    for name, ok in (
        ("Outbox", cls is not None),
        ("Outbox.open", callable(getattr(cls, "open", None))),
        ("Outbox.put", callable(getattr(cls, "put", None))),
        ("Outbox.close", callable(getattr(cls, "close", None))),
        ("OutMessage", hasattr(outbox, "OutMessage")),
    ):
        if not ok:
            return f"agent.delivery.outbox has no {name}"
    return None


def _outbox() -> ModuleType:
    """``agent.delivery.outbox`` (callers checked :func:`outbox_api_problem` first)."""
    if outbox_module is None:
        raise RuntimeError(f"agent.delivery.outbox cannot be imported: {OUTBOX_IMPORT_ERROR}")
    return outbox_module


def sample_event(n: int) -> Event:
    """A realistic 'new' event message."""
    event_id = uuid.uuid4().hex
    now = 1_700_000_000.0 + n
    return Event(
        id=f"{event_id}-0", event_id=event_id, type=EventType.NEW, camera="bench",
        label="person", score=0.87, box=(0.4, 0.2, 0.6, 0.9), start_ts=now - 0.6, end_ts=None,
        ts=now, has_snapshot=True, rev=0,
    )  # fmt: skip


def batch_factory(event: Event, jpeg: bytes | None) -> Callable[[int], Sequence[Any]]:
    """The batch the agent commits for one emission: the event JSON (+ its snapshot)."""
    make = _outbox().OutMessage

    def build(seq: int) -> list[Any]:
        msgs = [
            make(
                kind="event",
                topic=TOPICS.events,
                payload=encode_event(event, TOPICS, seq),
                qos=1,
                msg_id=event.id,
                event_id=event.event_id,
            )
        ]
        if jpeg is not None:
            msgs.append(
                make(
                    kind="snapshot",
                    topic=TOPICS.snapshot(event.event_id),
                    payload=jpeg,
                    qos=1,
                    msg_id=f"{event.id}-jpg",
                    event_id=event.event_id,
                )
            )
        return msgs

    return build


@dataclass
class _Mode:
    """One outbox file and what was timed on it so far."""

    key: str
    box: Any
    jpeg: bytes | None
    synchronous: Sync
    puts: int = 0
    seconds: float = 0.0

    def put_many(self, n: int) -> None:
        """``n`` timed puts of one event (+ snapshot) each."""
        batches = [batch_factory(sample_event(self.puts + i), self.jpeg) for i in range(n)]
        started = time.perf_counter()
        for batch in batches:
            self.box.put(batch)
        self.seconds += time.perf_counter() - started
        self.puts += n

    def result(self) -> dict[str, Any]:
        return {
            "synchronous": self.synchronous,
            "snapshot_bytes": len(self.jpeg) if self.jpeg is not None else 0,
            "puts": self.puts,
            "seconds": round(self.seconds, 3),
            "events_per_s": rate(self.puts, self.seconds),
            "ms_per_put": round(self.seconds / self.puts * 1000, 3) if self.puts else 0.0,
        }


def _open_modes(folder: Path, jpeg: bytes) -> list[_Mode]:
    modes = []
    for sync, with_jpeg in MODES:
        key = f"{sync.lower()}_{'snapshot' if with_jpeg else 'event'}"
        cfg = OutboxConfig(path=folder / f"{key}.db", synchronous=sync)
        modes.append(_Mode(key, _outbox().Outbox.open(cfg), jpeg if with_jpeg else None, sync))
    return modes


def outbox_stats(
    workdir: Path, jpeg: bytes, *, puts: int, max_s: float, rounds: int = 5
) -> dict[str, Any]:
    """Events/s for every mode of :data:`MODES`, or ``status: skipped`` with the reason.

    The modes take turns, ``puts / rounds`` puts at a time, so disk noise hits them alike;
    rounds stop early once ``max_s`` has passed.
    """
    problem = outbox_api_problem()
    if problem is not None:
        return {"status": "skipped", "reason": problem}
    per_round = max(1, puts // rounds)
    with tempfile.TemporaryDirectory(prefix="outbox-", dir=workdir) as tmp:
        modes = _open_modes(Path(tmp), jpeg)
        started = time.perf_counter()
        try:
            for _ in range(rounds):
                for mode in modes:
                    mode.put_many(per_round)
                if time.perf_counter() - started > max_s:
                    break
        finally:
            for mode in modes:
                mode.box.close()
    return {
        "status": "measured",
        "temp_dir_parent": str(workdir.resolve()),
        "runs": {mode.key: mode.result() for mode in modes},
    }
