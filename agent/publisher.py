"""The publisher thread: moves outbox rows to the broker, in order, at least once.

It is the only reader of the outbox and the only caller of ``link.publish`` for outbox rows.
While connected it keeps at most ``link.inflight_limit()`` rows handed to paho (paho's own
limit is ignored on reconnect), maps each mid to its rowid, and deletes rows only after their
PUBACK, in batches. A refused message (v5 failure reason) or one over ``max_payload_bytes`` is
dead-lettered so it cannot block the rows behind it. After a connection loss it forgets its
window and starts again from the oldest unacked row: rows that were delivered but not yet
acknowledged are sent again (counted as ``resends``; the ids let the server drop them).

Waking: the publisher owns one ``threading.Event``, registered with the outbox (set after
every committed put) and the link (set on PUBACK, connect and loss); it sleeps on it with a
timeout, and :meth:`Publisher.stop` sets it too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from agent.config import MqttConfig
from agent.errors import AgentError, LinkError
from agent.liveness import NULL_BEAT, Beat
from agent.mqtt_link import PubAck
from agent.outbox import Outbox, StoredMessage

log = logging.getLogger(__name__)


class Link(Protocol):
    """What the publisher needs of the MQTT link (:class:`agent.mqtt_link.MqttLink`)."""

    @property
    def connected(self) -> bool: ...

    def add_waker(self, event: threading.Event) -> None: ...

    def inflight_limit(self) -> int: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: dict[str, str] | None = None,
    ) -> int | None: ...

    def acks(self) -> list[PubAck]: ...

    def take_disconnected(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters for the heartbeat (since this process started)."""

    published: int
    acked: int
    dead_letters: int
    resends: int
    inflight: int
    errors: int


class Publisher:
    """Publishes outbox rows through a :class:`Link`; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        cfg: MqttConfig,
        *,
        ack_batch: int = 64,
        ack_delay_s: float = 0.05,
        idle_s: float = 1.0,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._max_payload = cfg.max_payload_bytes
        self._ack_batch = ack_batch
        self._ack_delay_s = ack_delay_s
        self._idle_s = idle_s
        self._wake = threading.Event()
        outbox.add_waker(self._wake)
        link.add_waker(self._wake)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.progress: Beat = NULL_BEAT  # ticked every iteration (agent.liveness)
        # owned by the publisher thread
        self._inflight: dict[int, int] = {}  # mid -> rowid
        self._cursor = 0  # highest rowid handed to paho on this connection
        self._high = 0  # highest rowid ever handed to paho
        self._to_ack: list[int] = []
        self._ack_due = 0.0
        self._published = self._acked = self._dead = self._resends = self._errors = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after flushing the acknowledged rows."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty; True if it emptied within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._outbox.stats().depth:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return False
            self._stop.wait(min(0.05, left))
        return True

    def stats(self) -> PublisherStats:
        return PublisherStats(
            published=self._published,
            acked=self._acked,
            dead_letters=self._dead,
            resends=self._resends,
            inflight=len(self._inflight),
            errors=self._errors,
        )

    # -- the publisher thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.progress.tick(max(self._idle_s, 1.0))  # the idle wait or the error pause (1 s)
            self._wake.clear()
            try:
                self.step()
            except Exception:  # thread top: log, count, pause, go on
                log.exception("publisher error")
                self._errors += 1
                self._stop.wait(1.0)
                continue
            self._wake.wait(self._ack_delay_s if self._to_ack else self._idle_s)
        try:
            self._flush(force=True)
        except AgentError:
            log.exception("publisher: final ack flush failed (those rows will be sent again)")

    def step(self) -> None:
        """One pass of the loop (the thread calls it; tests may too): acks, flush, refill."""
        lost = self._link.take_disconnected()
        self._collect_acks()  # after take_disconnected: every ack of the lost connection is in
        if lost:  # those mids will never be acked: start again from the oldest row
            self._inflight.clear()
            self._cursor = 0
        self._flush(force=lost)
        if self._link.connected:
            self._fill()

    def _collect_acks(self) -> None:
        for mid, ok, reason in self._link.acks():
            rowid = self._inflight.pop(mid, None)
            if rowid is None:
                continue  # a status or heartbeat message, or one from a lost connection
            if ok:
                if not self._to_ack:
                    self._ack_due = time.monotonic() + self._ack_delay_s
                self._to_ack.append(rowid)
                self._acked += 1
            else:
                self._dead_letter(rowid, f"broker refused it: {reason}")

    def _flush(self, force: bool) -> None:
        if self._to_ack and (
            force or len(self._to_ack) >= self._ack_batch or time.monotonic() >= self._ack_due
        ):
            self._outbox.ack(self._to_ack)
            self._to_ack = []

    def _fill(self) -> None:
        """Hand rows to paho, oldest first, until the in-flight window is full."""
        while (room := self._link.inflight_limit() - len(self._inflight)) > 0:
            rows = self._outbox.peek(self._cursor, room)
            if not rows:
                return
            for row in rows:
                if not self._send(row):
                    return

    def _send(self, row: StoredMessage) -> bool:
        """Publish one row (or dead-letter it); False when the link is not connected."""
        props = {"id": row.msg_id, "seq": str(row.seq)} if row.kind == "snapshot" else None
        if row.size > self._max_payload:
            self._dead_letter(
                row.rowid, f"{row.size} bytes > max_payload_bytes={self._max_payload}"
            )
        else:
            try:
                mid = self._link.publish(row.topic, row.payload, row.qos, properties=props)
            except LinkError as exc:
                self._dead_letter(row.rowid, str(exc))
            else:
                if mid is None:
                    return False
                self._inflight[mid] = row.rowid
                self._published += 1
                self._resends += row.rowid <= self._high
                self._high = max(self._high, row.rowid)
        self._cursor = row.rowid
        return True

    def _dead_letter(self, rowid: int, reason: str) -> None:
        if self._outbox.dead_letter(rowid, reason):
            self._dead += 1
