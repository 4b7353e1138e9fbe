"""Helpers for the fault tests: the agent as a real subprocess, the commune server's view of
what arrived, the outbox's health after the agent stopped, and the agent's memory.

The server's view is checked the way a commune server would: every event message committed by
the agent arrives (``seq`` 1..N with no gap; a duplicate is the same message id again, never
another message under the same seq), every visit that got ``new`` got an ``end``, and no
``update``/``end`` arrives for a visit whose ``new`` never came.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests import polling
from tests.mqtt_support import Received
from tests.test_end_to_end import BASE

Json = dict[str, Any]
REPO = Path(__file__).resolve().parents[1]
EDGE_AGENT = Path(sys.executable).with_name("edge-agent")
HEARTBEAT = f"{BASE}/heartbeat"


def agent_argv(*args: str) -> list[str]:
    """``.venv/bin/edge-agent ARGS`` (the installed console script, as a user runs it)."""
    exe = str(EDGE_AGENT) if EDGE_AGENT.exists() else None
    return [exe, *args] if exe else [sys.executable, "-m", "agent.cli", *args]


class AgentProcess:
    """``edge-agent run --config CONFIG`` with stdout/stderr appended to files in ``logs``.

    ``prefix`` runs it under a wrapper (e.g. ``["faketime", "-f", "-3650d"]``). Always
    stopped by pid (:meth:`kill` in teardown)."""

    def __init__(
        self,
        config: Path,
        logs: Path,
        *,
        prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.stderr_path = logs / "stderr"
        with (logs / "stdout").open("ab") as out, self.stderr_path.open("ab") as err:
            self._log_start = self.stderr_path.stat().st_size
            self.proc = subprocess.Popen(
                [*prefix, *agent_argv("run", "--config", str(config))],
                stdout=out, stderr=err, cwd=REPO, env={**os.environ, **(env or {})},
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """What this run wrote to stderr."""
        with self.stderr_path.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def rss(self) -> int | None:
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.proc.pid).memory_info().rss)
        return None


@contextlib.contextmanager
def agent(config: Path, logs: Path, **kw: Any) -> Iterator[AgentProcess]:
    a = AgentProcess(config, logs, **kw)
    try:
        yield a
    finally:
        a.kill()


# the fault tests' conditions open the outbox or read logs: every 0.1 s is often enough
wait_until = functools.partial(polling.wait_until, step=0.1)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_argv(*args), capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


def outbox_stats(config: Path) -> Json:
    out = run_cli("outbox", "stats", "--config", str(config))
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(json.loads(out.stdout))


def drain(config: Path, timeout: float = 60) -> None:
    out = run_cli("outbox", "drain", "--config", str(config), "--timeout", str(timeout),
                  timeout=timeout + 30)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of the outbox file (the agent must have stopped)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def outbox_ids(db: Path, running: AgentProcess) -> set[str]:
    """Message ids queued in the outbox of a running agent.

    The agent holds its outbox with ``locking_mode = EXCLUSIVE``, so nobody else may open it:
    the agent is paused (SIGSTOP: no write can be half done), the file and its WAL copied, the
    agent resumed, and the copy read (SQLite recovers the WAL's committed frames)."""
    with tempfile.TemporaryDirectory(prefix="outbox-copy-") as tmp:
        copy = Path(tmp) / db.name
        os.kill(running.pid, signal.SIGSTOP)
        try:
            for suffix in ("", "-wal"):
                src = Path(f"{db}{suffix}")
                if src.exists():
                    shutil.copyfile(src, f"{copy}{suffix}")
        finally:
            os.kill(running.pid, signal.SIGCONT)
        conn = sqlite3.connect(copy)
        try:
            return {r[0] for r in conn.execute("SELECT msg_id FROM messages")}
        finally:
            conn.close()


def events(msgs: list[Received]) -> list[Json]:
    return [json.loads(m.payload) for m in msgs if m.topic == f"{BASE}/events"]


def heartbeats(msgs: list[Received]) -> list[Json]:
    return [json.loads(m.payload) for m in msgs if m.topic == HEARTBEAT]


@dataclass
class ServerView:
    """What the commune server learned from the event messages it received."""

    received: int
    unique: int
    seqs: list[int]
    missing: list[int]
    conflicting: list[int]  # a seq carried by two different message ids
    open_visits: list[str]  # got `new`, never an `end`
    orphans: list[str]  # got `update`/`end` but never `new`
    end_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def duplicate_factor(self) -> float:
        return self.received / self.unique if self.unique else 1.0


def server_view(evs: list[Json], *, first_seq: int = 1) -> ServerView:
    by_seq: dict[int, set[str]] = defaultdict(set)
    types: dict[str, set[str]] = defaultdict(set)
    reasons: Counter[str] = Counter()
    for e in evs:
        by_seq[e["seq"]].add(e["id"])
        types[e["event_id"]].add(e["type"])
        if e["type"] == "end":
            reasons[str(e.get("end_reason"))] += 1
    seqs = sorted(by_seq)
    last = seqs[-1] if seqs else first_seq - 1
    return ServerView(
        received=len(evs),
        unique=len({e["id"] for e in evs}),
        seqs=seqs,
        missing=sorted(set(range(first_seq, last + 1)) - set(seqs)),
        conflicting=[s for s, ids in by_seq.items() if len(ids) > 1],
        open_visits=sorted(eid for eid, t in types.items() if "new" in t and "end" not in t),
        orphans=sorted(eid for eid, t in types.items() if "new" not in t),
        end_reasons=reasons,
    )


def assert_everything_delivered(view: ServerView, last_seq: int) -> None:
    """Every committed seq arrived once (by id), with nothing missing at the end either."""
    assert view.seqs, "no event reached the server"
    assert view.missing == [], f"seq gaps (lost events): {view.missing[:20]}"
    assert view.conflicting == [], f"one seq, two messages: {view.conflicting[:20]}"
    assert view.seqs[-1] == last_seq, f"the outbox handed out {last_seq}, got {view.seqs[-1]}"


def assert_every_visit_ended(view: ServerView) -> None:
    assert view.orphans == [], f"update/end without its new: {view.orphans}"
    assert view.open_visits == [], (
        f"{len(view.open_visits)} visits got `new` but never an `end` "
        f"(end reasons seen: {dict(view.end_reasons)})"
    )


class RssSampler:
    """RSS samples of whatever process ``pid()`` names now (the agent may be restarted)."""

    def __init__(self) -> None:
        self.samples: list[int] = []

    def sample(self, proc: AgentProcess) -> None:
        rss = proc.rss()
        if rss is not None:
            self.samples.append(rss)

    def assert_stable(self, *, limit: int = 400 * 2**20, margin: int = 64 * 2**20) -> None:
        """Below ``limit``; and the last third's median within ``margin`` of the middle
        third's (start-up excluded): no steady growth."""
        assert self.samples, "no RSS sample taken"
        assert max(self.samples) < limit, f"RSS peaked at {max(self.samples) / 2**20:.0f} MiB"
        n = len(self.samples)
        if n >= 9:
            mid = sorted(self.samples[n // 3 : 2 * n // 3])
            last = sorted(self.samples[2 * n // 3 :])
            grew = last[len(last) // 2] - mid[len(mid) // 2]
            assert grew < margin, f"RSS grew by {grew / 2**20:.0f} MiB over the run"
