"""The publisher thread: moves outbox rows to the broker, at least once, events first.

It is the only reader of the outbox and the only caller of ``link.publish`` for outbox rows.

Lanes: events and snapshots are two FIFOs. Events may use the whole in-flight window
(``link.inflight_limit()``: paho's own limit is ignored on reconnect); snapshots at most
``mqtt.max_inflight_snapshots`` of it, so on a slow uplink an event waits behind at most that
many JPEGs, never behind the whole snapshot backlog. Within a lane rows go out in creation
order.

Acks: rows are deleted only after their PUBACK, in batches. A v5 refusal is sorted by what
can be done about it (:func:`classify_refusal`): permanent ones (payload too large, topic
invalid, ...) and a message over ``max_payload_bytes`` are dead-lettered at once so they never
block the rows behind them; "not authorized" is retried ``mqtt.refused_retries`` times (an ACL
reload on the broker) and then dead-lettered; transient ones (quota exceeded, unspecified,
busy) are retried with jittered backoff for as long as it takes. A row waiting for its retry
keeps its place in the window, so a broker that refuses everything is not flooded.

After a connection loss the publisher forgets its window and starts again from the oldest
unacked row of each lane: rows that were delivered but not yet acknowledged are sent again
(counted as ``resends``; the ids let the server drop them).

Gaps: when the outbox's disk bound dropped messages, a ``gap`` message (its own schema, on
``…/gaps``) reports them once connected; the drops are forgotten only after its PUBACK.

Waking: the publisher owns one ``threading.Event``, registered with the outbox (set after
every committed put) and the link (set on PUBACK, connect and loss); it sleeps on it with a
timeout, and :meth:`Publisher.stop` sets it too.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from agent.config import MqttConfig
from agent.contract import Topics, encode_gap
from agent.delivery.mqtt_link import PubAck, backoff_delay
from agent.delivery.outbox import GapReport, Kind, Outbox, StoredMessage
from agent.errors import AgentError, LinkError
from agent.node.liveness import NULL_BEAT, Beat

log = logging.getLogger(__name__)

Refusal = Literal["permanent", "not_authorized", "transient"]

# MQTT 5 PUBACK reason codes that no retry will change
_PERMANENT = {
    0x82: "protocol error",
    0x90: "topic name invalid",
    0x95: "packet too large",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
}
_NOT_AUTHORIZED = 0x87
_LANES: tuple[Kind, ...] = ("event", "snapshot")


def classify_refusal(code: int) -> Refusal:
    """What to do about a PUBACK failure reason code (>= 0x80)."""
    if code in _PERMANENT:
        return "permanent"
    if code == _NOT_AUTHORIZED:
        return "not_authorized"
    return "transient"


class Link(Protocol):
    """What the publisher needs of the MQTT link (:class:`agent.delivery.mqtt_link.MqttLink`)."""

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
    refused: int
    retrying: int
    gaps_sent: int


@dataclass(frozen=True, slots=True)
class _Retry:
    row: StoredMessage
    due: float


class Publisher:
    """Publishes outbox rows through a :class:`Link`; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        cfg: MqttConfig,
        topics: Topics,
        *,
        ack_batch: int = 64,
        ack_delay_s: float = 0.05,
        idle_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._cfg = cfg
        self._topics = topics
        self._ack_batch = ack_batch
        self._ack_delay_s = ack_delay_s
        self._idle_s = idle_s
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._wake = threading.Event()
        outbox.add_waker(self._wake)
        link.add_waker(self._wake)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.progress: Beat = NULL_BEAT  # ticked every iteration (agent.node.liveness)
        # owned by the publisher thread
        self._inflight: dict[int, StoredMessage] = {}  # mid -> row
        self._retry: dict[int, _Retry] = {}  # rowid -> row waiting to be sent again
        self._attempts: dict[int, int] = {}  # rowid -> refusals so far
        self._cursor: dict[Kind, int] = dict.fromkeys(_LANES, 0)  # last rowid handed out
        self._high: dict[Kind, int] = dict.fromkeys(_LANES, 0)  # highest rowid ever handed out
        self._gap: tuple[int, GapReport] | None = None  # (mid, report) in flight
        self._gap_not_before = 0.0
        self._to_ack: list[int] = []
        self._ack_due = 0.0
        self._published = self._acked = self._dead = self._resends = self._errors = 0
        self._refused = self._gaps_sent = 0

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

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
            refused=self._refused,
            retrying=len(self._retry),
            gaps_sent=self._gaps_sent,
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
            self._wake.wait(self._sleep_s())
        try:
            self._flush(force=True)
        except AgentError:
            log.exception("publisher: final ack flush failed (those rows will be sent again)")

    def _sleep_s(self) -> float:
        wait = self._ack_delay_s if self._to_ack else self._idle_s
        if self._retry:
            wait = min(wait, max(0.0, min(r.due for r in self._retry.values()) - self._clock()))
        return wait

    def step(self) -> None:
        """One pass of the loop (the thread calls it; tests may too): acks, flush, refill."""
        lost = self._link.take_disconnected()
        self._collect_acks()  # after take_disconnected: every ack of the lost connection is in
        if lost:  # those mids will never be acked: start again from the oldest rows
            self._inflight.clear()
            self._retry.clear()
            self._cursor = dict.fromkeys(_LANES, 0)
            self._gap = None
        self._flush(force=lost)
        if self._link.connected:
            self._fill()
            self._send_gap()

    def _collect_acks(self) -> None:
        for mid, ok, reason, code in self._link.acks():
            if self._gap is not None and mid == self._gap[0]:
                report, self._gap = self._gap[1], None
                self._gap_acked(report, ok, reason)
                continue
            row = self._inflight.pop(mid, None)
            if row is None:
                continue  # a status or heartbeat message, or one from a lost connection
            if ok:
                if not self._to_ack:
                    self._ack_due = self._clock() + self._ack_delay_s
                self._to_ack.append(row.rowid)
                self._attempts.pop(row.rowid, None)
                self._acked += 1
            else:
                self._refusal(row, reason, code)

    def _refusal(self, row: StoredMessage, reason: str, code: int) -> None:
        self._refused += 1
        kind = classify_refusal(code)
        attempts = self._attempts.get(row.rowid, 0) + 1
        why = f"broker refused it: {reason} (reason code {code:#04x})"
        if kind == "permanent" or (
            kind == "not_authorized" and attempts >= self._cfg.refused_retries
        ):
            self._dead_letter(row.rowid, f"{why}, {attempts} time(s)")
            return
        self._attempts[row.rowid] = attempts
        delay = backoff_delay(
            attempts - 1, self._cfg.reconnect_min_s, self._cfg.reconnect_max_s, self._rng
        )
        self._retry[row.rowid] = _Retry(row, self._clock() + delay)
        if attempts == 1:
            log.warning("outbox row %d (%s): %s; retrying with backoff", row.rowid, row.kind, why)

    def _flush(self, force: bool) -> None:
        if self._to_ack and (
            force or len(self._to_ack) >= self._ack_batch or self._clock() >= self._ack_due
        ):
            self._outbox.ack(self._to_ack)
            self._to_ack = []

    def _busy(self, kind: Kind | None = None) -> int:
        """Window slots taken (by one lane): rows in flight plus rows waiting for a retry."""
        rows = [*self._inflight.values(), *(r.row for r in self._retry.values())]
        return sum(1 for r in rows if kind is None or r.kind == kind)

    def _fill(self) -> None:
        """Hand rows to paho until the window is full: due retries, then events, snapshots."""
        limit = self._link.inflight_limit()
        now = self._clock()
        for rowid, retry in sorted(self._retry.items()):
            if retry.due <= now:
                del self._retry[rowid]
                if not self._send(retry.row):
                    return
        if not self._fill_lane("event", lambda: limit - self._busy()):
            return
        cap = min(limit, self._cfg.max_inflight_snapshots)
        self._fill_lane("snapshot", lambda: min(limit - self._busy(), cap - self._busy("snapshot")))

    def _fill_lane(self, kind: Kind, room: Callable[[], int]) -> bool:
        """Send the lane's next rows while ``room()`` > 0; False when the link went down."""
        while (n := room()) > 0:
            rows = self._outbox.peek(self._cursor[kind], n, kind)
            if not rows:
                return True
            for row in rows:
                if not self._send(row):
                    return False
        return True

    def _send(self, row: StoredMessage) -> bool:
        """Publish one row (or dead-letter it); False when the link is not connected."""
        props = {"id": row.msg_id, "seq": str(row.seq)} if row.kind == "snapshot" else None
        if row.size > self._cfg.max_payload_bytes:
            limit = self._cfg.max_payload_bytes
            self._dead_letter(row.rowid, f"{row.size} bytes > max_payload_bytes={limit}")
        else:
            try:
                mid = self._link.publish(row.topic, row.payload, row.qos, properties=props)
            except LinkError as exc:
                self._dead_letter(row.rowid, str(exc))
            else:
                if mid is None:
                    return False
                self._inflight[mid] = row
                self._published += 1
                self._resends += row.rowid <= self._high[row.kind]
                self._high[row.kind] = max(self._high[row.kind], row.rowid)
        self._cursor[row.kind] = max(self._cursor[row.kind], row.rowid)
        return True

    def _dead_letter(self, rowid: int, reason: str) -> None:
        self._attempts.pop(rowid, None)
        if self._outbox.dead_letter(rowid, reason):
            self._dead += 1

    # -- gap messages -------------------------------------------------------------------------

    def _send_gap(self) -> None:
        if (
            self._gap is not None
            or not self._outbox.gaps_pending
            or self._clock() < self._gap_not_before
        ):
            return
        report = self._outbox.pending_gap()
        if report is None:
            return
        payload = encode_gap(
            self._topics, gap_id=gap_id(report), seq_ranges=report.seq_ranges,
            snapshot_event_ids=report.snapshot_event_ids,
            first_dropped_ts=report.first_dropped_ts, last_dropped_ts=report.last_dropped_ts,
            ts=time.time(),
        )  # fmt: skip
        mid = self._link.publish(self._topics.gaps, payload, 1)
        if mid is not None:
            self._gap = (mid, report)

    def _gap_acked(self, report: GapReport, ok: bool, reason: str) -> None:
        if ok:
            self._outbox.clear_gaps(report.upto)
            self._gaps_sent += 1
        else:
            self._gap_not_before = self._clock() + self._cfg.reconnect_max_s
            log.warning("gap message refused by the broker (%s): the drops stay recorded", reason)


def gap_id(report: GapReport) -> str:
    """A gap message's id: the same for the same report, so re-sends are recognised."""
    text = repr((report.seq_ranges, report.snapshot_event_ids, report.first_dropped_ts))
    return "gap-" + hashlib.sha256(text.encode()).hexdigest()[:20]
