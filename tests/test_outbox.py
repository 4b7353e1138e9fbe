"""The SQLite outbox on a real file: durability, order, bound, corruption, SIGKILL, disk full."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.delivery.outbox import Outbox, OutMessage, seq_ranges
from agent.domain import OpenVisit
from agent.errors import OutboxError

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def event(i: int, size: int = 1000, tag: str = "e") -> OutMessage:
    return OutMessage("event", "camnet/c/n/events", os.urandom(size), 1, f"{tag}{i}", f"ev{i}")


def snapshot(i: int, size: int = 40_000, tag: str = "s") -> OutMessage:
    topic = f"camnet/c/n/snapshots/ev{i}"
    return OutMessage("snapshot", topic, os.urandom(size), 1, f"{tag}{i}", f"ev{i}")


@pytest.fixture
def cfg(tmp_path: Path) -> OutboxConfig:
    return OutboxConfig(path=tmp_path / "sub" / "outbox.db", max_bytes=64 * MiB)


def test_rows_and_seq_survive_reopen_and_seq_is_never_reused(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg)
    assert cfg.path.parent.is_dir()
    seqs = [ob.put([event(i), snapshot(i)]) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    rows = ob.peek(0, 100)
    assert [r.msg_id for r in rows] == [m for i in range(5) for m in (f"e{i}", f"s{i}")]
    assert [r.seq for r in rows] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    ob.ack([r.rowid for r in rows[:6]])
    ob.close()

    ob = Outbox.open(cfg)
    left = ob.peek(0, 100)
    assert [r.msg_id for r in left] == ["e3", "s3", "e4", "s4"]
    assert left[0].payload == rows[6].payload
    ob.ack([r.rowid for r in left])  # empty now: neither seq nor rowid may restart
    assert ob.put([event(9)]) == 6
    ob.close()
    ob = Outbox.open(cfg)
    assert ob.put([event(10)]) == 7
    assert ob.peek(0, 10)[-1].rowid > rows[-1].rowid
    assert ob.stats().last_seq == 7
    ob.close()


def test_factory_stamps_the_seq_and_failed_puts_consume_none(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg)
    ob.put([event(0)])

    def make(seq: int) -> list[OutMessage]:
        body = json.dumps({"id": "x1", "seq": seq}).encode()
        return [OutMessage("event", "camnet/c/n/events", body, 1, "x1", "evx")]

    assert ob.put(make) == 2
    assert json.loads(ob.peek(0, 10)[-1].payload) == {"id": "x1", "seq": 2}
    with pytest.raises(OutboxError, match="UNIQUE"):
        ob.put([event(0)])  # duplicate msg_id: nothing stored, seq not consumed
    assert ob.put([event(1)]) == 3
    assert ob.stats().depth == 3
    ob.close()


def test_concurrent_puts_get_distinct_consecutive_seqs(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg)
    got: list[int] = []

    def worker(w: int) -> None:
        for i in range(50):
            got.append(ob.put([event(i, 200, tag=f"w{w}-")]))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 201))
    rows = ob.peek(0, 1000)
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)  # rowid order == seq order
    ob.close()


def test_ack_deletes_only_given_rows_and_wakes(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg)
    woke = threading.Event()
    ob.add_waker(woke)
    for i in range(4):
        ob.put([event(i)])
    assert woke.is_set()
    rows = ob.peek(0, 10)
    assert ob.ack([rows[1].rowid, rows[3].rowid, 99_999]) == 2
    assert [r.msg_id for r in ob.peek(0, 10)] == ["e0", "e2"]
    assert [r.msg_id for r in ob.peek(rows[0].rowid, 10)] == ["e2"]
    st = ob.stats()
    assert (st.depth, st.events, st.snapshots, st.payload_bytes) == (2, 2, 0, 2000)
    assert st.oldest_age_s >= 0
    ob.close()


def test_bound_drops_oldest_snapshots_first_then_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = OutboxConfig(path=tmp_path / "o.db", max_bytes=2 * MiB, synchronous="NORMAL")
    ob = Outbox.open(cfg)
    with caplog.at_level(logging.WARNING, logger="agent.delivery.outbox"):
        for i in range(60):  # ~2.5 MB of snapshots and 60 KB of events
            ob.put([event(i), snapshot(i)])
    st = ob.stats()
    assert st.dropped_snapshots > 0
    assert st.dropped_events == 0
    assert st.events == 60
    kept = [r.msg_id for r in ob.peek(0, 1000) if r.kind == "snapshot"]
    assert kept == [f"s{i}" for i in range(60 - len(kept), 60)]  # the newest survive
    assert "outbox full" in caplog.text
    for i in range(60, 2600):  # events only: the old events must go now, never the new ones
        ob.put([event(i)])
    st = ob.stats()
    assert st.snapshots == 0
    assert st.dropped_snapshots == 60
    assert st.dropped_events > 0
    assert ob.peek(0, 100_000)[-1].msg_id == "e2599"
    assert st.file_bytes <= cfg.max_bytes * 1.05
    ob.close()
    ob = Outbox.open(cfg)  # the drop counters are persisted
    assert (ob.stats().dropped_snapshots, ob.stats().dropped_events) == (60, st.dropped_events)
    ob.close()


def test_file_stays_bounded_over_put_ack_cycles(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg.model_copy(update={"synchronous": "NORMAL"}))
    sizes = []
    for cycle in range(40):
        for i in range(25):
            n = cycle * 100 + i
            ob.put([event(n), snapshot(n)])
        if cycle % 2:  # leave a backlog every other cycle, drain it on the next
            ob.ack([r.rowid for r in ob.peek(0, 1000)])
            sizes.append(ob.stats().file_bytes)
    assert ob.stats().depth == 0
    assert max(sizes[3:]) <= max(sizes[:3]) * 1.05, sizes  # freed pages are reused
    ob.close()


def test_file_shrinks_after_a_big_backlog_drains(tmp_path: Path) -> None:
    cfg = OutboxConfig(path=tmp_path / "o.db", max_bytes=8 * MiB)
    ob = Outbox.open(cfg)
    for i in range(150):  # ~6 MB
        ob.put([event(i), snapshot(i)])
    assert ob.stats().file_bytes > 5 * MiB
    ob.ack([r.rowid for r in ob.peek(0, 1000)])
    assert ob.stats().file_bytes < 1 * MiB
    ob.put([event(1000)])
    assert [r.msg_id for r in ob.peek(0, 10)] == ["e1000"]
    ob.close()


def _garble(path: Path, offset: int, n: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(os.urandom(n))


@pytest.mark.parametrize("damage", ["random_bytes", "garbled_pages"])
def test_corrupt_file_is_quarantined_and_a_fresh_outbox_starts(
    cfg: OutboxConfig, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg.path.parent.mkdir(parents=True)
    ob = Outbox.open(cfg)
    for i in range(40):
        ob.put([event(i, 3000)])
    lost_last_seq = ob.stats().last_seq
    ob.close()
    if damage == "random_bytes":
        cfg.path.write_bytes(os.urandom(50_000))
        Path(f"{cfg.path}-wal").write_bytes(os.urandom(1000))
    else:
        _garble(cfg.path, 3 * 4096, 8 * 4096)
    before = cfg.path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="agent.delivery.outbox"):
        ob = Outbox.open(cfg)
    st = ob.stats()
    assert st.quarantined == 1
    assert st.quarantined_file is not None
    moved = Path(st.quarantined_file)
    assert moved.name.startswith("outbox.db.corrupt-")
    assert moved.read_bytes() == before
    assert str(moved) in caplog.text
    if damage == "random_bytes":
        assert Path(f"{moved}-wal").exists()
    seq = ob.put([event(1)])
    assert lost_last_seq == 40
    assert seq > lost_last_seq  # above anything the lost file handed out
    assert [r.msg_id for r in ob.peek(0, 10)] == ["e1"]
    ob.close()
    ob = Outbox.open(cfg)  # and it is a healthy file from now on
    assert ob.stats().quarantined == 1
    assert ob.stats().quarantined_file is None
    ob.close()


def test_seq_after_a_quarantine_stays_above_the_lost_file_with_the_clock_set_back(
    cfg: OutboxConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pi without an RTC boots in 1970 until NTP syncs: a quarantine then must not restart
    ``seq`` below what the lost file (itself seeded after an earlier quarantine) handed out."""
    cfg.path.parent.mkdir(parents=True)
    cfg.path.write_bytes(os.urandom(20_000))  # first quarantine, real clock
    ob = Outbox.open(cfg)
    for i in range(5):
        ob.put([event(i)])
    before = ob.stats().last_seq
    ob.close()
    cfg.path.write_bytes(os.urandom(20_000))  # lost again ...
    monkeypatch.setattr(time, "time", lambda: 86_400.0)  # ... after a boot on 2 Jan 1970
    ob = Outbox.open(cfg)
    try:
        assert ob.stats().quarantined == 1
        assert ob.put([event(9)]) > before
    finally:
        ob.close()


def test_only_the_newest_quarantined_copies_are_kept(cfg: OutboxConfig) -> None:
    cfg.path.parent.mkdir(parents=True)
    for _ in range(5):
        cfg.path.write_bytes(os.urandom(10_000))
        Outbox.open(cfg).close()
    copies = sorted(cfg.path.parent.glob("outbox.db.corrupt-*"))
    assert len(copies) == 3
    ob = Outbox.open(cfg)
    assert ob.stats().quarantined == 1  # counted in the file that replaced the bad one
    ob.close()


def test_dead_letter_moves_the_row_and_counts_it(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg)
    ob.put([event(0)])
    ob.put([event(1)])
    first = ob.peek(0, 1)[0]
    assert ob.dead_letter(first.rowid, "too large")
    assert not ob.dead_letter(first.rowid, "again")
    assert [r.msg_id for r in ob.peek(0, 10)] == ["e1"]
    ob.close()
    ob = Outbox.open(cfg)
    assert ob.stats().dead_letters == 1
    ob.close()
    conn = sqlite3.connect(cfg.path)
    row = conn.execute("SELECT msg_id, reason, length(payload) FROM dead_letters").fetchall()
    conn.close()
    assert row == [("e0", "too large", 1000)]


_CHILD = """
import os, sys
from pathlib import Path
from agent.config import OutboxConfig
from agent.domain import OpenVisit
from agent.delivery.outbox import Outbox, OutMessage, seq_ranges
ob = Outbox.open(OutboxConfig(path=Path(sys.argv[1])))
i = 0
while True:
    msgs = [OutMessage("event", "t/events", os.urandom(800), 1, f"e{i}", f"ev{i}")]
    if i % 3 == 0:
        msgs.append(OutMessage("snapshot", "t/snap", os.urandom(30000), 1, f"s{i}", f"ev{i}"))
    seq = ob.put(msgs)
    print("P", seq, *(m.msg_id for m in msgs), flush=True)
    if i % 5 == 4:
        rows = ob.peek(0, 2)
        print("A", 0, *(r.msg_id for r in rows), flush=True)  # before: it may commit unseen
        ob.ack([r.rowid for r in rows])
    i += 1
"""


def test_sigkill_during_puts_keeps_every_returned_put(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    lines = [child.stdout.readline() for _ in range(400)]
    os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate(timeout=10)
    lines += rest.splitlines(keepends=True)
    done = [line.split() for line in lines if line.endswith("\n")]
    put = {msg_id: int(seq) for kind, seq, *ids in done if kind == "P" for msg_id in ids}
    acked = {msg_id for kind, _, *ids in done if kind == "A" for msg_id in ids}
    assert len(put) > 300
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    stored = dict(conn.execute("SELECT msg_id, seq FROM messages").fetchall())
    counter = conn.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()[0]
    conn.close()
    missing = {m for m in put if m not in stored} - acked
    assert not missing
    assert all(stored[m] == put[m] for m in put if m in stored)
    assert counter >= max(put.values())
    ob = Outbox.open(OutboxConfig(path=path))
    assert ob.put([event(0, tag="after")]) == counter + 1
    ob.close()


_DISK_FULL = """
import os, subprocess, sys, json
from pathlib import Path
d = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(d)], check=True)
from agent.config import OutboxConfig
from agent.errors import OutboxError
from agent.domain import OpenVisit
from agent.delivery.outbox import Outbox, OutMessage, seq_ranges
(d / "filler").write_bytes(b"x" * 1_000_000)
ob = Outbox.open(OutboxConfig(path=d / "o.db", max_bytes=1024 * 1024))
ok, error = [], None
for i in range(100):
    try:
        ok.append(ob.put([OutMessage("snapshot", "t", os.urandom(40000), 1, f"s{i}", "e")]))
    except OutboxError as exc:
        error = str(exc)
        break
depth_at_error = ob.stats().depth
(d / "filler").unlink()
after = ob.put([OutMessage("event", "t", b"x" * 100, 1, "after", "e")])
ob.close()
import sqlite3
conn = sqlite3.connect(d / "o.db")
check = conn.execute("PRAGMA integrity_check").fetchone()[0]
seqs = [r[0] for r in conn.execute("SELECT seq FROM messages ORDER BY id")]
print(json.dumps(dict(ok=ok, error=error, depth=depth_at_error, after=after, check=check,
                      seqs=seqs)))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root to mount a tmpfs"
)
def test_disk_full_raises_outbox_error_and_the_outbox_stays_usable(tmp_path: Path) -> None:
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable, "-c", _DISK_FULL]
    out = subprocess.run(
        [*cmd, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0 and "mount" in out.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr[-300:]}")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert "disk full" in (res["error"] or "")
    assert len(res["ok"]) == res["depth"] > 0
    assert res["after"] == len(res["ok"]) + 1  # the failed put consumed no seq
    assert res["check"] == "ok"
    assert res["seqs"] == [*res["ok"], res["after"]]


# ---------------------------------------------------------------- v2: lanes, visits, gaps


def visit(event_id: str, rev: int = 0) -> OpenVisit:
    return OpenVisit(event_id, "cam", "person", 100.0, 100.0 + rev, (0.1, 0.1, 0.2, 0.2), 0.9, rev)


def test_lanes_are_separate_fifos(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg)
    for i in range(3):
        ob.put([event(i), snapshot(i, 100)])
    assert [r.msg_id for r in ob.peek(0, 10, "event")] == ["e0", "e1", "e2"]
    assert [r.msg_id for r in ob.peek(0, 10, "snapshot")] == ["s0", "s1", "s2"]
    first_snap = ob.peek(0, 1, "snapshot")[0].rowid
    assert [r.msg_id for r in ob.peek(first_snap, 10, "snapshot")] == ["s1", "s2"]
    ob.close()


def test_open_visits_change_with_the_messages_in_one_transaction(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg)
    ob.put([event(0)], visit=visit("v1"))
    ob.put([event(1)], visit=visit("v2"))
    ob.put([event(2)], visit=visit("v1", rev=1))
    ob.put([event(3)], closes="v2")
    with pytest.raises(OutboxError):  # a failed put changes no visit either
        ob.put([event(0)], visit=visit("v3"))  # duplicate msg_id: the transaction fails
    ob.close()
    ob = Outbox.open(cfg)  # as after a crash
    assert ob.open_visits() == [visit("v1", rev=1)]
    assert ob.stats().open_visits == 1
    ob.close()


def test_drops_are_recorded_as_gaps_until_reported(tmp_path: Path) -> None:
    ob = Outbox.open(OutboxConfig(path=tmp_path / "o.db", max_bytes=1 * MiB))
    for i in range(40):
        ob.put([event(i, 20_000)])  # events only: the oldest events go
    st = ob.stats()
    assert st.dropped_events > 0
    gap = ob.pending_gap()
    assert gap is not None
    assert gap.seq_ranges == ((1, st.dropped_events),)  # the oldest seqs, one range
    assert gap.snapshot_event_ids == ()
    assert st.gaps_pending == st.dropped_events
    ob.close()
    ob = Outbox.open(OutboxConfig(path=tmp_path / "o.db", max_bytes=1 * MiB))
    assert ob.pending_gap() == gap  # survives a restart
    assert ob.clear_gaps(gap.upto) == st.dropped_events
    assert ob.pending_gap() is None
    ob.close()


@pytest.mark.parametrize(
    ("seqs", "ranges"),
    [([], ()), ([5], ((5, 5),)), ([1, 2, 3, 7], ((1, 3), (7, 7))), ([4, 2, 3, 3], ((2, 4),))],
)
def test_seq_ranges(seqs: list[int], ranges: tuple[tuple[int, int], ...]) -> None:
    assert seq_ranges(seqs) == ranges


def test_dead_letters_can_be_listed_requeued_and_purged(cfg: OutboxConfig) -> None:
    ob = Outbox.open(cfg)
    for i in range(3):
        ob.put([event(i, 50_000)])
    rows = ob.peek(0, 10)
    for row in rows:
        assert ob.dead_letter(row.rowid, f"refused {row.msg_id}")
    listed = ob.dead_letters()
    assert [(d.msg_id, d.seq, d.reason) for d in listed] == [
        ("e0", 1, "refused e0"), ("e1", 2, "refused e1"), ("e2", 3, "refused e2"),
    ]  # fmt: skip
    assert ob.stats().depth == 0
    assert ob.requeue_dead_letters([listed[1].id]) == 1
    (back,) = ob.peek(0, 10)
    assert (back.msg_id, back.seq, back.payload) == ("e1", 2, rows[1].payload)
    assert back.rowid > rows[-1].rowid  # at the end of its lane
    assert ob.purge_dead_letters() == 2
    assert ob.dead_letters() == []
    assert ob.stats().dead_letters == 3  # the counter counts every dead letter ever
    ob.close()


def test_dead_letters_are_kept_within_a_byte_bound(tmp_path: Path) -> None:
    ob = Outbox.open(OutboxConfig(path=tmp_path / "o.db", max_bytes=2 * MiB))  # keeps 256 KiB
    for i in range(10):
        ob.put([event(i, 60_000)])
        ob.dead_letter(ob.peek(0, 1)[0].rowid, "too large")
    kept = ob.dead_letters()
    assert sum(d.size for d in kept) <= 2 * MiB // 8
    assert [d.msg_id for d in kept] == [f"e{i}" for i in range(10 - len(kept), 10)]  # newest
    assert ob.stats().dead_letters == 10
    ob.close()


def test_seq_never_goes_back_after_the_file_is_lost_whatever_the_clock(
    cfg: OutboxConfig,
) -> None:
    ob = Outbox.open(cfg)
    last = [ob.put([event(i)]) for i in range(1500)][-1]
    ob.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cfg.path}{suffix}").unlink(missing_ok=True)  # deleted (or quarantined)
    ob = Outbox.open(cfg)
    assert ob.put([event(0)]) > last
    ob.close()


def test_household_data_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cfg = OutboxConfig(path=tmp_path / "data" / "outbox.db")
        ob = Outbox.open(cfg)
        ob.put([event(0), snapshot(0)])
        ob.close()
        cfg.path.write_bytes(b"garbage" * 100)  # corrupt: quarantined on open
        Outbox.open(cfg).close()
    finally:
        os.umask(old)
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.iterdir() if p.is_file()]
    assert any(".corrupt-" in p.name for p in files)
    assert any(p.name == "outbox.db.seq" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name


def test_a_version_1_file_is_upgraded_in_place(cfg: OutboxConfig) -> None:
    cfg.path.parent.mkdir(parents=True)
    conn = sqlite3.connect(cfg.path)
    conn.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL,"
        " topic TEXT NOT NULL, qos INTEGER NOT NULL, msg_id TEXT NOT NULL UNIQUE,"
        " event_id TEXT NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL,"
        " payload BLOB NOT NULL);"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO counters VALUES ('seq', 41), ('last_id', 1);"
        "INSERT INTO messages VALUES (1, 41, 'event', 't', 1, 'old', 'ev', 0, 2, x'7b7d');"
        "PRAGMA user_version = 1;"
    )
    conn.close()
    ob = Outbox.open(cfg)
    assert [r.msg_id for r in ob.peek(0, 10, "event")] == ["old"]
    assert ob.put([event(1)]) == 42
    assert ob.open_visits() == []
    assert ob.integrity_ok()
    ob.close()
