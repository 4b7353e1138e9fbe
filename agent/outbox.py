"""The durable outbox: every event and snapshot stays here until the broker acknowledged it.

SQLite (stdlib ``sqlite3``) in WAL mode, ``synchronous`` FULL or NORMAL from the config,
``secure_delete=OFF`` (Debian's build otherwise overwrites every deleted page) and
``auto_vacuum=INCREMENTAL``: freed pages are reused, and the file shrinks once a backlog has
drained. ``messages.id`` is the creation order and the ``rowid`` the API speaks of; it comes
from a persisted counter, so it is never reused, even after the table empties.

Threads: an :class:`Outbox` holds ONE connection (``check_same_thread=False``) behind a
``threading.Lock``; every public method is one short transaction under that lock, so camera
workers may ``put`` while the publisher thread ``peek``s and ``ack``s. The file is opened with
``locking_mode=EXCLUSIVE``: a second process on the same file gets :class:`OutboxError`
instead of sharing (and breaking) the sequence counter.

Sequence numbers: :meth:`Outbox.put` gives each batch the next per-node ``seq`` (stored in the
``counters`` table, +1 per committed batch, never reused; a failed put consumes none). When the
payload must contain the seq, pass a factory ``Callable[[int], Sequence[OutMessage]]``
instead of a ready batch: it is called with the seq under the outbox lock, just before the
transaction that commits its messages with that seq.

Bound: ``max_bytes`` caps the file, WAL included (the WAL gets an eighth). A put that would
push the pages in use past it first drops the oldest snapshots, then the oldest events
(counted in ``counters``, logged at most once a minute); the new batch is always stored.

Corruption: a file that is not SQLite or fails ``PRAGMA quick_check`` is renamed (with its
-wal/-shm) to ``<name>.corrupt-<UTC stamp>`` (the newest 3 are kept) and a fresh outbox
starts; its ``seq`` restarts at epoch milliseconds, above any seq the lost file handed out.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.config import OutboxConfig
from agent.errors import OutboxCorrupt, OutboxError
from agent.outbox_file import (
    PAGE,
    CorruptFile,
    connect_checked,
    file_bytes,
    prune_quarantined,
    quarantine,
    translate,
    wal_pages,
)

log = logging.getLogger(__name__)

Kind = Literal["event", "snapshot"]
_Gone = tuple[int, str, int]  # (rowid, kind, size) of a deleted row
_DEAD_LETTERS_KEPT = 100
_DEAD_PAYLOAD_KEPT = 16 * 1024
_CHUNK = 500
_DROP_LOG_EVERY_S = 60.0
_SHRINK_FREE_BYTES = 1024 * 1024
_COLUMNS = "id, seq, kind, topic, qos, msg_id, event_id, created, size, payload"


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to commit: opaque ``payload`` bytes for ``topic``."""

    kind: Kind
    topic: str
    payload: bytes
    qos: int
    msg_id: str
    event_id: str

    def __post_init__(self) -> None:
        if self.kind not in ("event", "snapshot"):
            raise ValueError(f"OutMessage.kind must be 'event' or 'snapshot', got {self.kind!r}")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"OutMessage.qos must be 0, 1 or 2, got {self.qos}")
        if not self.topic or not self.msg_id:
            raise ValueError("OutMessage.topic and msg_id must not be empty")
        if not isinstance(self.payload, bytes):
            raise TypeError("OutMessage.payload must be bytes")


BatchFactory = Callable[[int], Sequence[OutMessage]]
"""Builds a batch once its ``seq`` is known; runs under the outbox lock, so keep it quick."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A committed message; ``rowid`` is its creation order and what :meth:`Outbox.ack` takes."""

    rowid: int
    seq: int
    kind: Kind
    topic: str
    qos: int
    msg_id: str
    event_id: str
    created: float
    size: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Outbox counters for the heartbeat (drop and dead-letter counts survive restarts)."""

    depth: int
    events: int
    snapshots: int
    payload_bytes: int
    file_bytes: int
    oldest_age_s: float
    dropped_events: int
    dropped_snapshots: int
    dead_letters: int
    quarantined: int
    quarantined_file: str | None
    last_seq: int


def _row_cost(size: int) -> int:
    """Rough file bytes of a row: payload, columns, index entries (measured: within ~15%)."""
    return size + 256


class Outbox:
    """The on-disk queue; see the module docstring for threads, seq, bound and corruption."""

    def __init__(self, conn: sqlite3.Connection, cfg: OutboxConfig, quarantined: Path | None):
        self._conn = conn
        self._cfg = cfg
        self._lock = threading.Lock()
        self._wakers: list[threading.Event] = []
        self._closed = False
        self._quarantined_file = str(quarantined) if quarantined else None
        self._counters: dict[str, int] = dict(conn.execute("SELECT name, value FROM counters"))
        self._rows = {"event": 0, "snapshot": 0}  # what the table holds (we are its only writer)
        self._payload = 0
        gone = conn.execute("SELECT id, kind, size FROM messages").fetchall()
        self._account(gone, +1)
        self._counters["last_id"] = max([self._counters["last_id"], *(g[0] for g in gone)])
        self._floor = {"snapshot": 0, "event": 0}  # every row of that kind below is gone
        self._last_drop_log = float("-inf")
        self._page: int = conn.execute("PRAGMA page_size").fetchone()[0]
        self._budget = cfg.max_bytes - wal_pages(cfg) * PAGE  # the WAL gets the rest

    @classmethod
    def open(cls, cfg: OutboxConfig) -> Outbox:
        """Open or create the outbox at ``cfg.path``; a corrupt file is quarantined first."""
        try:
            cfg.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create outbox directory {cfg.path.parent}: {exc}") from exc
        try:
            return cls(connect_checked(cfg, seed_seq=0), cfg, None)
        except CorruptFile as exc:
            reason = str(exc)
        moved = quarantine(cfg.path)
        prune_quarantined(cfg.path)
        log.error("outbox %s is corrupt (%s): moved to %s, starting empty", cfg.path, reason, moved)
        try:
            conn = connect_checked(cfg, seed_seq=int(time.time() * 1000), quarantined=True)
        except CorruptFile as exc:
            raise OutboxCorrupt(f"fresh outbox {cfg.path} is unusable too: {exc}") from exc
        return cls(conn, cfg, moved)

    def add_waker(self, event: threading.Event) -> None:
        """Set ``event`` after every committed :meth:`put` (the publisher sleeps on it)."""
        self._wakers.append(event)

    def put(self, batch: Sequence[OutMessage] | BatchFactory) -> int:
        """Commit ``batch`` in one transaction under the next seq and return that seq.

        ``batch`` is the messages, or a factory called with the seq that returns them.
        Raises :class:`OutboxError` (nothing stored, seq not consumed) on SQLite failures.
        """
        with self._lock:
            self._check_open()
            seq = self._counters["seq"] + 1
            msgs = list(batch(seq) if callable(batch) else batch)
            if not msgs:
                raise ValueError("Outbox.put needs at least one message")
            dropped = self._transaction("put", lambda: self._insert(seq, msgs))
            self._counters["seq"] = seq
            self._counters["last_id"] += len(msgs)
            self._account([(0, m.kind, len(m.payload)) for m in msgs], +1)
            self._account(dropped, -1)
            for rowid, kind, _ in dropped:
                self._counters[f"dropped_{kind}s"] += 1
                self._floor[kind] = max(self._floor[kind], rowid)
        for event in self._wakers:
            event.set()
        if dropped:
            self._log_drops(len(dropped))
        return seq

    def _insert(self, seq: int, msgs: list[OutMessage]) -> list[_Gone]:
        dropped = self._make_room(sum(_row_cost(len(m.payload)) for m in msgs))
        last_id = self._counters["last_id"]  # explicit ids: no sqlite_sequence page to write
        self._conn.executemany(
            "UPDATE counters SET value = ? WHERE name = ?",
            [(seq, "seq"), (last_id + len(msgs), "last_id")],
        )
        now = time.time()
        rows = [
            (i, seq, m.kind, m.topic, m.qos, m.msg_id, m.event_id, now, len(m.payload), m.payload)
            for i, m in enumerate(msgs, last_id + 1)
        ]
        self._conn.executemany(
            "INSERT INTO messages (id, seq, kind, topic, qos, msg_id, event_id, created, size,"
            " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return dropped

    def _make_room(self, need: int) -> list[_Gone]:
        """Delete the oldest snapshots, then the oldest events, until ``need`` more bytes fit.

        The measure is the pages in use (file minus free list); the rows to drop are chosen
        by their estimated size, and the next put measures again.
        """
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        excess = (pages - free) * self._page + need - self._budget
        victims: list[_Gone] = []
        for kind in ("snapshot", "event"):
            after = self._floor[kind]
            while excess > 0:
                got: list[_Gone] = self._conn.execute(
                    "SELECT id, kind, size FROM messages WHERE kind = ? AND id > ? ORDER BY id"
                    " LIMIT 64",
                    (kind, after),
                ).fetchall()
                for row in got:
                    if excess > 0:
                        victims.append(row)
                        excess -= _row_cost(row[2])
                if len(got) < 64:
                    break
                after = got[-1][0]
        self._delete([v[0] for v in victims])
        for kind in ("snapshot", "event"):
            if n := sum(1 for v in victims if v[1] == kind):
                sql = "UPDATE counters SET value = value + ? WHERE name = ?"
                self._conn.execute(sql, (n, f"dropped_{kind}s"))
        return victims

    def ack(self, rowids: Sequence[int]) -> int:
        """Delete delivered rows in one transaction (unknown ids are ignored); rows deleted."""
        if not rowids:
            return 0
        with self._lock:
            self._check_open()
            gone = self._transaction("ack", lambda: self._select_delete(rowids))
            self._account(gone, -1)
            if not any(self._rows.values()):
                self._shrink()
        return len(gone)

    def _select_delete(self, rowids: Sequence[int]) -> list[_Gone]:
        gone: list[_Gone] = []
        for chunk in _chunks(rowids):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, kind, size FROM messages WHERE id IN ({marks})"  # noqa: S608
            gone += self._conn.execute(sql, chunk).fetchall()
        self._delete([g[0] for g in gone])
        return gone

    def dead_letter(self, rowid: int, reason: str) -> bool:
        """Move a message the broker will never take to ``dead_letters``; False if it is gone.

        The newest 100 dead letters are kept, with their payload only up to 16 KiB.
        """
        with self._lock:
            self._check_open()
            gone = self._transaction("dead_letter", lambda: self._move_dead(rowid, reason))
            self._account(gone, -1)
            self._counters["dead_letters"] += len(gone)
        if gone:
            log.warning("outbox row %d dead-lettered: %s", rowid, reason)
        return bool(gone)

    def _move_dead(self, rowid: int, reason: str) -> list[_Gone]:
        sql = "SELECT id, kind, size FROM messages WHERE id = ?"
        gone: list[_Gone] = self._conn.execute(sql, (rowid,)).fetchall()
        if gone:
            self._conn.execute(
                "INSERT INTO dead_letters (msg_rowid, seq, kind, topic, qos, msg_id, event_id,"
                " created, size, reason, dead_at, payload) SELECT id, seq, kind, topic, qos,"
                " msg_id, event_id, created, size, ?, ?, CASE WHEN size <= ? THEN payload END"
                " FROM messages WHERE id = ?",
                (reason, time.time(), _DEAD_PAYLOAD_KEPT, rowid),
            )
            self._conn.execute(
                "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?",
                (_DEAD_LETTERS_KEPT,),
            )
            self._delete([rowid])
            self._conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'dead_letters'")
        return gone

    def peek(self, after_rowid: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` stored messages with rowid > ``after_rowid``, oldest first."""
        sql = f"SELECT {_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?"  # noqa: S608
        with self._lock:
            self._check_open()
            try:
                rows = self._conn.execute(sql, (after_rowid, limit)).fetchall()
            except sqlite3.Error as exc:
                raise translate(exc, "peek", self._cfg.path) from exc
        return [StoredMessage(*r) for r in rows]

    def stats(self) -> OutboxStats:
        """Depth, sizes and counters: one indexed lookup and two stat() calls."""
        with self._lock:
            self._check_open()
            try:
                sql = "SELECT created FROM messages ORDER BY id LIMIT 1"
                oldest = self._conn.execute(sql).fetchone()
            except sqlite3.Error as exc:
                raise translate(exc, "stats", self._cfg.path) from exc
            c = self._counters
            return OutboxStats(
                depth=sum(self._rows.values()),
                events=self._rows["event"],
                snapshots=self._rows["snapshot"],
                payload_bytes=self._payload,
                file_bytes=file_bytes(self._cfg.path),
                oldest_age_s=max(0.0, time.time() - oldest[0]) if oldest else 0.0,
                dropped_events=c["dropped_events"],
                dropped_snapshots=c["dropped_snapshots"],
                dead_letters=c["dead_letters"],
                quarantined=c["quarantined"],
                quarantined_file=self._quarantined_file,
                last_seq=c["seq"],
            )

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise :class:`OutboxError`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self._cfg.path} is closed")

    def _transaction(self, what: str, body: Callable[[], list[_Gone]]) -> list[_Gone]:
        """``body`` between BEGIN IMMEDIATE and COMMIT; rolled back and translated on errors."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            result = body()
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("outbox rollback failed")
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, what, self._cfg.path) from exc
            raise
        return result

    def _delete(self, rowids: Sequence[int]) -> None:
        for chunk in _chunks(rowids):
            marks = ",".join("?" * len(chunk))
            self._conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)  # noqa: S608

    def _account(self, rows: Iterable[_Gone], sign: int) -> None:
        for _, kind, size in rows:
            self._rows[kind] += sign
            self._payload += sign * size

    def _shrink(self) -> None:
        """After a big backlog drained, give its pages back (small ones are simply reused)."""
        try:
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0] * self._page
            if free >= max(_SHRINK_FREE_BYTES, self._budget // 4):
                self._conn.executescript("PRAGMA incremental_vacuum;")  # steps to the end
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            log.warning("outbox shrink failed", exc_info=True)

    def _log_drops(self, n: int) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            c, msg = (
                self._counters,
                "outbox full: dropped %d old rows (%d events, %d snapshots so far)",
            )
            log.warning(msg, n, c["dropped_events"], c["dropped_snapshots"])


def _chunks(items: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(items), _CHUNK):
        yield list(items[i : i + _CHUNK])
