"""The outbox's SQLite file: open, check, configure, create the schema, quarantine.

Used only by :mod:`agent.outbox`; see its docstring for the guarantees.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from agent.config import OutboxConfig
from agent.errors import OutboxError

log = logging.getLogger("agent.outbox")

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
)
_COUNTER_NAMES = ("seq", "last_id", "dead_letters", "quarantined", *DROPPED)
_SCHEMA_VERSION = 1
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
    conn.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'seq'", (seed_seq,))
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
