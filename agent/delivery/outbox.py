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
transaction that commits its messages with that seq. A seq mark beside the file
(``<name>.seq``, fsynced once per 1000 seqs) runs ahead of every seq handed out, so a fresh
file after a quarantine or a deletion continues above it: ``seq`` never goes backwards,
whatever the wall clock does.

Lanes: each kind (``event``, ``snapshot``) is its own FIFO (:meth:`Outbox.peek` by kind), so
the publisher never queues an event behind snapshots.

Visits: a put may carry the :class:`~agent.domain.OpenVisit` its message opened or updated, or
the id of the visit it ended; the ``visits`` table changes in the same transaction as the
messages, so after a crash :meth:`Outbox.open_visits` is exactly the visits whose ``end`` was
never committed.

Bound: ``max_bytes`` caps the file, WAL included (the WAL gets an eighth). A put that would
push the pages in use past it first drops the oldest snapshots, then the oldest events
(counted in ``counters``, logged at most once a minute); the new batch is always stored.
Every drop is recorded in ``gaps`` in the same transaction, until a gap message about it has
been acknowledged (:meth:`Outbox.pending_gap`, :meth:`Outbox.clear_gaps`).

Dead letters: messages the broker will never take; kept (payload included) up to
``_DEAD_LETTERS_KEPT`` rows and an eighth of ``max_bytes``, newest first, and can be listed,
re-queued or purged.

Corruption: a file that is not SQLite or fails ``PRAGMA quick_check`` is renamed (with its
-wal/-shm) to ``<name>.corrupt-<UTC stamp>`` (the newest 3 are kept) and a fresh outbox
starts, its ``seq`` continuing above the seq mark.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.config import OutboxConfig
from agent.delivery.outbox_file import (
    PAGE,
    SEQ_RESERVE,
    CorruptFile,
    connect_checked,
    file_bytes,
    make_data_dir,
    prune_quarantined,
    quarantine,
    read_seq_mark,
    translate,
    wal_pages,
    write_seq_mark,
)
from agent.domain import OpenVisit
from agent.errors import OutboxCorrupt, OutboxError

log = logging.getLogger(__name__)

Kind = Literal["event", "snapshot"]
_Gone = tuple[int, str, int]  # (rowid, kind, size) of a deleted row
_DEAD_LETTERS_KEPT = 1000
_GAP_ROWS_PER_REPORT = 500
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
    dead_letters_kept: int
    gaps_pending: int
    open_visits: int
    quarantined: int
    quarantined_file: str | None
    last_seq: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the broker will never take, as kept in the ``dead_letters`` table."""

    id: int
    seq: int
    kind: Kind
    topic: str
    msg_id: str
    event_id: str
    created: float
    size: int
    reason: str
    dead_at: float


@dataclass(frozen=True, slots=True)
class GapReport:
    """What the disk bound dropped and no gap message has reported yet.

    ``upto`` is the newest gap row covered (pass it to :meth:`Outbox.clear_gaps` once the
    report is acknowledged); ``seq_ranges`` are inclusive ``(first, last)`` ranges of dropped
    event messages; ``snapshot_event_ids`` the visits that lost a snapshot.
    """

    upto: int
    seq_ranges: tuple[tuple[int, int], ...]
    snapshot_event_ids: tuple[str, ...]
    first_dropped_ts: float
    last_dropped_ts: float


def seq_ranges(seqs: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Inclusive ranges covering the given sequence numbers: [1, 2, 3, 7] -> ((1, 3), (7, 7))."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return tuple(out)


def _row_cost(size: int) -> int:
    """Rough file bytes of a row: payload, columns, index entries (measured: within ~15%)."""
    return size + 256


class Outbox:
    """The on-disk queue; see the module docstring for threads, seq, lanes, bound and corruption."""

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
        self._visits: int = conn.execute("SELECT count(*) FROM visits").fetchone()[0]
        self._gaps: int = conn.execute("SELECT count(*) FROM gaps").fetchone()[0]
        self._dead_kept: int = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        self._mark = read_seq_mark(cfg.path)
        self._advance_mark(self._counters["seq"])

    @classmethod
    def open(cls, cfg: OutboxConfig) -> Outbox:
        """Open or create the outbox at ``cfg.path``; a corrupt file is quarantined first."""
        make_data_dir(cfg.path.parent)
        mark = read_seq_mark(cfg.path)
        try:
            return cls(connect_checked(cfg, seed_seq=mark), cfg, None)
        except CorruptFile as exc:
            reason = str(exc)
        moved = quarantine(cfg.path)
        prune_quarantined(cfg.path)
        log.error("outbox %s is corrupt (%s): moved to %s, starting empty", cfg.path, reason, moved)
        try:
            conn = connect_checked(cfg, seed_seq=mark, quarantined=True)
        except CorruptFile as exc:
            raise OutboxCorrupt(f"fresh outbox {cfg.path} is unusable too: {exc}") from exc
        return cls(conn, cfg, moved)

    def add_waker(self, event: threading.Event) -> None:
        """Set ``event`` after every committed :meth:`put` (the publisher sleeps on it)."""
        self._wakers.append(event)

    def put(
        self,
        batch: Sequence[OutMessage] | BatchFactory,
        *,
        visit: OpenVisit | None = None,
        closes: str | None = None,
    ) -> int:
        """Commit ``batch`` in one transaction under the next seq and return that seq.

        ``batch`` is the messages, or a factory called with the seq that returns them.
        ``visit`` is recorded as open (inserted or replaced), ``closes`` names a visit that
        this batch ends; both change in the same transaction as the messages.
        Raises :class:`OutboxError` (nothing stored, seq not consumed) on SQLite failures.
        """
        with self._lock:
            self._check_open()
            seq = self._counters["seq"] + 1
            msgs = list(batch(seq) if callable(batch) else batch)
            if not msgs:
                raise ValueError("Outbox.put needs at least one message")
            self._advance_mark(seq)

            def body() -> list[_Gone]:
                dropped = self._insert(seq, msgs)
                self._change_visit(visit, closes)
                return dropped

            dropped = self._transaction("put", body)
            self._counters["seq"] = seq
            self._counters["last_id"] += len(msgs)
            self._account([(0, m.kind, len(m.payload)) for m in msgs], +1)
            self._account(dropped, -1)
            self._gaps += len(dropped)
            if visit is not None or closes is not None:  # else the visits table is unchanged
                self._visits = self._conn.execute("SELECT count(*) FROM visits").fetchone()[0]
            for rowid, kind, _ in dropped:
                self._counters[f"dropped_{kind}s"] += 1
                self._floor[kind] = max(self._floor[kind], rowid)
        for event in self._wakers:
            event.set()
        if dropped:
            self._log_drops(len(dropped))
        return seq

    def _advance_mark(self, seq: int) -> None:
        """Keep the seq mark on disk ahead of ``seq`` (one fsynced write per SEQ_RESERVE)."""
        if seq > self._mark:
            write_seq_mark(self._cfg.path, seq + SEQ_RESERVE)
            self._mark = seq + SEQ_RESERVE

    def _change_visit(self, visit: OpenVisit | None, closes: str | None) -> None:
        if closes is not None:
            self._conn.execute("DELETE FROM visits WHERE event_id = ?", (closes,))
        if visit is not None:
            self._conn.execute(
                "INSERT OR REPLACE INTO visits (event_id, camera, label, start_ts, last_ts, box,"
                " score, rev) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (visit.event_id, visit.camera, visit.label, visit.start_ts, visit.last_ts,
                 json.dumps(visit.box), visit.score, visit.rev),
            )  # fmt: skip

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
        by their estimated size, and the next put measures again. Each drop is recorded in
        ``gaps`` for the next gap message.
        """
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        excess = (pages - free) * self._page + need - self._budget
        victims: list[tuple[int, str, int, int, str]] = []
        for kind in ("snapshot", "event"):
            after = self._floor[kind]
            while excess > 0:
                got: list[tuple[int, str, int, int, str]] = self._conn.execute(
                    "SELECT id, kind, size, seq, event_id FROM messages WHERE kind = ? AND id > ?"
                    " ORDER BY id LIMIT 64",
                    (kind, after),
                ).fetchall()
                for row in got:
                    if excess > 0:
                        victims.append(row)
                        excess -= _row_cost(row[2])
                if len(got) < 64:
                    break
                after = got[-1][0]
        if not victims:
            return []
        self._delete([v[0] for v in victims])
        now = time.time()
        self._conn.executemany(
            "INSERT INTO gaps (kind, seq, event_id, created) VALUES (?, ?, ?, ?)",
            [(kind, seq, event_id, now) for _, kind, _, seq, event_id in victims],
        )
        for kind in ("snapshot", "event"):
            if n := sum(1 for v in victims if v[1] == kind):
                sql = "UPDATE counters SET value = value + ? WHERE name = ?"
                self._conn.execute(sql, (n, f"dropped_{kind}s"))
        return [(rowid, kind, size) for rowid, kind, size, _, _ in victims]

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

    # -- dead letters ---------------------------------------------------------------------------

    def dead_letter(self, rowid: int, reason: str) -> bool:
        """Move a message the broker will never take to ``dead_letters``; False if it is gone."""
        with self._lock:
            self._check_open()
            gone = self._transaction("dead_letter", lambda: self._move_dead(rowid, reason))
            self._account(gone, -1)
            self._counters["dead_letters"] += len(gone)
            self._dead_kept = self._conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
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
                " msg_id, event_id, created, size, ?, ?, payload FROM messages WHERE id = ?",
                (reason, time.time(), rowid),
            )
            self._delete([rowid])
            self._conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'dead_letters'")
            self._bound_dead_letters()
        return gone

    def _bound_dead_letters(self) -> None:
        """Keep the newest dead letters within a row count and an eighth of ``max_bytes``."""
        self._conn.execute(
            "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?",
            (_DEAD_LETTERS_KEPT,),
        )
        self._conn.execute(
            "DELETE FROM dead_letters WHERE id < (SELECT coalesce(min(id), 0) FROM"
            " (SELECT id, sum(size) OVER (ORDER BY id DESC) AS total FROM dead_letters)"
            " WHERE total <= ?)",
            (self._cfg.max_bytes // 8,),
        )

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """The kept dead letters, oldest first."""
        sql = (
            "SELECT id, seq, kind, topic, msg_id, event_id, created, size, reason, dead_at"
            " FROM dead_letters ORDER BY id LIMIT ?"
        )
        with self._lock:
            self._check_open()
            try:
                rows = self._conn.execute(sql, (limit,)).fetchall()
            except sqlite3.Error as exc:
                raise translate(exc, "dead_letters", self._cfg.path) from exc
        return [DeadLetter(*r) for r in rows]

    def requeue_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters (all, or those ids) back at the end of their lane, same id and seq."""
        where, args = _ids_clause(ids)

        def body() -> list[_Gone]:
            rows = self._conn.execute(
                "SELECT id, seq, kind, topic, qos, msg_id, event_id, created, size, payload"  # noqa: S608
                f" FROM dead_letters WHERE payload IS NOT NULL{where} ORDER BY id",
                args,
            ).fetchall()
            last = self._counters["last_id"]
            fresh = [(last + i, *r[1:]) for i, r in enumerate(rows, 1)]
            self._conn.executemany(
                "INSERT OR IGNORE INTO messages (id, seq, kind, topic, qos, msg_id, event_id,"
                " created, size, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                fresh,
            )
            self._conn.execute(
                "UPDATE counters SET value = ? WHERE name = 'last_id'", (last + len(rows),)
            )
            self._conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(r[0],) for r in rows])
            return [(r[0], r[2], r[8]) for r in fresh]

        with self._lock:
            self._check_open()
            back = self._transaction("requeue", body)
            self._counters["last_id"] += len(back)
            self._account(back, +1)
            self._dead_kept -= len(back)
        for event in self._wakers:
            event.set()
        return len(back)

    def purge_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Delete dead letters for good (all, or those ids); how many were deleted."""
        where, args = _ids_clause(ids)

        def body() -> list[_Gone]:
            sql = f"DELETE FROM dead_letters WHERE 1 = 1{where} RETURNING id"  # noqa: S608
            return [(r[0], "event", 0) for r in self._conn.execute(sql, args).fetchall()]

        with self._lock:
            self._check_open()
            gone = self._transaction("purge", body)
            self._dead_kept -= len(gone)
        return len(gone)

    # -- visits and gaps ------------------------------------------------------------------------

    def open_visits(self) -> list[OpenVisit]:
        """Visits whose ``end`` was never committed (after a crash: the ones to end now)."""
        sql = (
            "SELECT event_id, camera, label, start_ts, last_ts, box, score, rev FROM visits"
            " ORDER BY start_ts, event_id"
        )
        with self._lock:
            self._check_open()
            try:
                rows = self._conn.execute(sql).fetchall()
            except sqlite3.Error as exc:
                raise translate(exc, "open_visits", self._cfg.path) from exc
        out = []
        for event_id, camera, label, start, last, box, score, rev in rows:
            x1, y1, x2, y2 = (float(v) for v in json.loads(box))
            out.append(
                OpenVisit(event_id, camera, label, start, last, (x1, y1, x2, y2), score, rev)
            )
        return out

    @property
    def gaps_pending(self) -> int:
        """Dropped rows not yet reported by an acknowledged gap message (no I/O)."""
        return self._gaps

    def pending_gap(self) -> GapReport | None:
        """The oldest drops not yet reported (up to 500 rows at a time), or None."""
        sql = "SELECT id, kind, seq, event_id, created FROM gaps ORDER BY id LIMIT ?"
        with self._lock:
            self._check_open()
            try:
                rows = self._conn.execute(sql, (_GAP_ROWS_PER_REPORT,)).fetchall()
            except sqlite3.Error as exc:
                raise translate(exc, "pending_gap", self._cfg.path) from exc
        if not rows:
            return None
        return GapReport(
            upto=rows[-1][0],
            seq_ranges=seq_ranges(r[2] for r in rows if r[1] == "event"),
            snapshot_event_ids=tuple(dict.fromkeys(r[3] for r in rows if r[1] == "snapshot")),
            first_dropped_ts=min(r[4] for r in rows),
            last_dropped_ts=max(r[4] for r in rows),
        )

    def clear_gaps(self, upto: int) -> int:
        """Forget the drops a delivered gap message reported (gap rows up to ``upto``)."""

        def body() -> list[_Gone]:
            sql = "DELETE FROM gaps WHERE id <= ? RETURNING id"
            gone = [(r[0], "event", 0) for r in self._conn.execute(sql, (upto,)).fetchall()]
            self._conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'gaps_reported'")
            return gone

        with self._lock:
            self._check_open()
            gone = self._transaction("clear_gaps", body)
            self._gaps -= len(gone)
            self._counters["gaps_reported"] += 1
        return len(gone)

    # -- reading --------------------------------------------------------------------------------

    def peek(self, after_rowid: int, limit: int, kind: Kind | None = None) -> list[StoredMessage]:
        """Up to ``limit`` stored messages with rowid > ``after_rowid``, oldest first.

        With ``kind``, only that lane.
        """
        if kind is None:
            sql = f"SELECT {_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?"  # noqa: S608
            args: tuple[object, ...] = (after_rowid, limit)
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM messages WHERE kind = ? AND id > ?"  # noqa: S608
                " ORDER BY id LIMIT ?"
            )
            args = (kind, after_rowid, limit)
        with self._lock:
            self._check_open()
            try:
                rows = self._conn.execute(sql, args).fetchall()
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
                dead_letters_kept=self._dead_kept,
                gaps_pending=self._gaps,
                open_visits=self._visits,
                quarantined=c["quarantined"],
                quarantined_file=self._quarantined_file,
                last_seq=c["seq"],
            )

    def integrity_ok(self) -> bool:
        """``PRAGMA integrity_check`` says ok (a full read of the file: not on a hot path)."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return rows == [("ok",)]

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


def _ids_clause(ids: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
    if ids is None:
        return "", ()
    if not ids:
        return " AND 0", ()
    return f" AND id IN ({','.join('?' * len(ids))})", tuple(ids)


def _chunks(items: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(items), _CHUNK):
        yield list(items[i : i + _CHUNK])
