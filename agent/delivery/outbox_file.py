"""The outbox's SQLite file: open, check, configure, create the schema, quarantine.

Used only by :mod:`agent.delivery.outbox`; see its docstring for the guarantees. Household
data stays private: the data directory is created 0700, the database (and so its -wal/-shm,
which SQLite creates with the database's mode), the seq mark and quarantined copies are 0600.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from datetime import datetime, timezone
from pathlib import Path

from agent.config import OutboxConfig
from agent.errors import OutboxError

log = logging.getLogger("agent.delivery.outbox")

PAGE = 4096
QUARANTINED_KEPT = 3
DROPPED = ("dropped_events", "dropped_snapshots")


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY,"
    " seq INTEGER NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('event', 'snapshot')),"
    " topic TEXT NOT NULL, qos INTEGER NOT NULL, msg_id TEXT NOT NULL UNIQUE,"
    " event_id TEXT NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL,"
    " payload BLOB NOT NULL)",  # payload last: reading the small columns skips overflow pages
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY,"
    " msg_rowid INTEGER, seq INTEGER, kind TEXT, topic TEXT, qos INTEGER, msg_id TEXT,"
    " event_id TEXT, created REAL, size INTEGER, reason TEXT, dead_at REAL, payload BLOB)",
    # v2: one lane per kind (events are never queued behind snapshots)
    "CREATE INDEX IF NOT EXISTS messages_lane ON messages (kind, id)",
    # v2: the open visits, committed with the messages that open, update and end them
    "CREATE TABLE IF NOT EXISTS visits (event_id TEXT PRIMARY KEY, camera TEXT NOT NULL,"
    " label TEXT NOT NULL, start_ts REAL NOT NULL, last_ts REAL NOT NULL, box TEXT NOT NULL,"
    " score REAL NOT NULL, rev INTEGER NOT NULL)",
    # v2: what the disk bound dropped, until a gap message about it is acknowledged
    "CREATE TABLE IF NOT EXISTS gaps (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
    " seq INTEGER NOT NULL, event_id TEXT NOT NULL, created REAL NOT NULL)",
)
_COUNTER_NAMES = ("seq", "last_id", "dead_letters", "quarantined", "gaps_reported", *DROPPED)
_SCHEMA_VERSION = 2  # v1 files are upgraded in place (tables and index added)
SEQ_RESERVE = 1000  # the seq mark on disk runs this far ahead of the last seq handed out
_BUSY_S = 5.0
_SQLITE_BUSY, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 5, 11, 13, 26


class CorruptFile(Exception):  # noqa: N818 - an internal signal, never leaves the outbox
    """The file is not a usable SQLite database."""


def _errcode(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11; 3.10 has only the text
    return code & 0xFF if isinstance(code, int) else None


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = _errcode(exc)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return "file is not a database" in str(exc) or "malformed" in str(exc)


def translate(exc: sqlite3.Error, what: str, path: Path) -> OutboxError:
    if _errcode(exc) == _SQLITE_FULL or "disk is full" in str(exc):
        return OutboxError(f"outbox {what} failed: disk full at {path}, nothing written ({exc})")
    if _is_corruption(exc):
        return OutboxError(f"outbox {what} failed: {path} is corrupt ({exc})")
    if _errcode(exc) == _SQLITE_BUSY or "locked" in str(exc):
        return OutboxError(f"outbox {path} is in use by another process (another agent?)")
    return OutboxError(f"outbox {what} failed at {path}: {exc}")


def connect_checked(
    cfg: OutboxConfig, seed_seq: int, quarantined: bool = False
) -> sqlite3.Connection:
    """A configured connection to a checked file; :class:`CorruptFile` if it is unusable."""
    if not _has_sqlite_header(cfg.path):  # before SQLite opens it (and deletes its WAL)
        raise CorruptFile("not an SQLite 3 file (bad header)")
    _create_private(cfg.path)
    try:
        conn = sqlite3.connect(
            str(cfg.path), timeout=_BUSY_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise translate(exc, "open", cfg.path) from exc
    try:
        _check(conn)
        _configure(conn, cfg)
        _create(conn, seed_seq, quarantined)
    except sqlite3.Error as exc:
        conn.close()
        if _is_corruption(exc):
            raise CorruptFile(str(exc)) from exc
        raise translate(exc, "open", cfg.path) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def make_data_dir(directory: Path) -> None:
    """Create the data directory 0700 (whatever the umask); warn if it is open to others."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(directory.stat().st_mode)
    except OSError as exc:
        raise OutboxError(f"cannot create outbox directory {directory}: {exc}") from exc
    if mode & 0o077 and not mode & stat.S_ISVTX:  # a sticky /tmp-like dir is not ours to fix
        log.warning("data directory %s is mode %04o: other users can list it (want 0700)",
                    directory, mode)  # fmt: skip


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (SQLite gives -wal/-shm its mode)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise OutboxError(f"cannot create outbox {path}: {exc}") from exc
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _seq_mark_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.seq")


def read_seq_mark(path: Path) -> int:
    """The seq high-water mark kept beside the database (0 when there is none)."""
    try:
        return int(_seq_mark_path(path).read_text(encoding="ascii").strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        log.warning("cannot read the seq mark of %s (%s): using the database alone", path, exc)
        return 0


def write_seq_mark(path: Path, value: int) -> None:
    """Durably record that no seq above ``value`` has been handed out (write, fsync, rename).

    It survives a quarantined or deleted database, so ``seq`` never goes backwards whatever
    the wall clock says (a Pi without an RTC boots in 1970).
    """
    mark = _seq_mark_path(path)
    tmp = mark.with_name(f"{mark.name}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{value}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(mark)
        dir_fd = os.open(mark.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise OutboxError(f"cannot write the seq mark {mark}: {exc}") from exc


def _has_sqlite_header(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from exc
    return head in (b"", b"SQLite format 3\x00")


def _check(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise CorruptFile("quick_check: " + "; ".join(str(r[0]) for r in rows[:3]))
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > _SCHEMA_VERSION:
        raise OutboxError(f"outbox schema version {version} is newer than this agent's")
    if 0 < version < _SCHEMA_VERSION:
        log.info("outbox schema version %d: upgrading to %d", version, _SCHEMA_VERSION)


def _configure(conn: sqlite3.Connection, cfg: OutboxConfig) -> None:
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect only before the first table
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OutboxError(f"outbox {cfg.path}: cannot switch to WAL (journal_mode={mode})")
    pages = wal_pages(cfg)
    for pragma in (
        f"synchronous = {cfg.synchronous}",
        "secure_delete = OFF",
        f"busy_timeout = {int(_BUSY_S * 1000)}",
        f"wal_autocheckpoint = {pages}",
        f"journal_size_limit = {pages * PAGE}",
    ):
        conn.execute(f"PRAGMA {pragma}")


def wal_pages(cfg: OutboxConfig) -> int:
    """WAL pages between checkpoints, also the WAL's size limit: an eighth of the bound."""
    return min(1000, max(64, cfg.max_bytes // 8 // PAGE))


def _create(conn: sqlite3.Connection, seed_seq: int, quarantined: bool) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    names = [(name,) for name in _COUNTER_NAMES]
    conn.executemany("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", names)
    # A new file (or a stale one: far below the mark) continues from the seq mark on disk.
    conn.execute(
        "UPDATE counters SET value = ? WHERE name = 'seq' AND (value = 0 OR value < ? - ?)",
        (seed_seq, seed_seq, SEQ_RESERVE),
    )
    if quarantined:
        conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'quarantined'")
    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    conn.execute("COMMIT")


def quarantine(path: Path) -> Path:
    """Rename ``path`` and its -wal/-shm/-journal to ``<name>.corrupt-<UTC stamp>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm", "-journal"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            try:
                src.rename(f"{target}{suffix}")
                Path(f"{target}{suffix}").chmod(0o600)
            except OSError as exc:
                raise OutboxError(f"cannot quarantine corrupt outbox file {src}: {exc}") from exc
    return target


def prune_quarantined(path: Path, keep: int = QUARANTINED_KEPT) -> None:
    """Delete all but the newest ``keep`` quarantined copies: they must not fill the disk."""
    copies = sorted(path.parent.glob(f"{path.name}.corrupt-*"), key=lambda p: p.stat().st_mtime)
    bases = list(dict.fromkeys(str(p).removesuffix("-wal").removesuffix("-shm") for p in copies))
    for base in bases[:-keep]:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{base}{suffix}").unlink(missing_ok=True)
        log.warning("deleted old quarantined outbox %s", base)


def file_bytes(path: Path) -> int:
    files = (path, Path(f"{path}-wal"))
    return sum(f.stat().st_size for f in files if f.exists())
