"""Liveness: is every thread the agent owns alive and making progress?

Each owned thread holds a :class:`Beat` and calls :meth:`Beat.tick` once per loop iteration,
declaring how long it may now stay silent on purpose (``allow_s``: the read timeout it is about
to block in, the backoff it is about to sleep). A beat is *stalled* when it has not ticked for
``allow_s + grace_s`` (``grace_s`` covers the work between two ticks), *dead* when its thread
ended without :meth:`Beat.retire` (which a thread calls when it ends on purpose: a file that
finished, a stop). :class:`Liveness` is the registry the systemd watchdog reads
(:mod:`agent.node.service`): it pings only while :meth:`Liveness.check` is healthy.

Ticks are cheap (one clock read, one tuple store) and lock-free: only the owning thread writes
its beat; readers see either the old or the new tuple.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BeatState = Literal["waiting", "ok", "stalled", "dead", "done"]


def beat_state(
    *,
    ticked_at: float | None,
    due_by: float,
    now: float,
    grace_s: float,
    thread_alive: bool,
    retired: bool,
) -> BeatState:
    """A beat's state (pure): ``due_by`` is the last tick plus its declared ``allow_s``.

    done: retired on purpose; waiting: never ticked; dead: its thread ended without retiring;
    stalled: silent for longer than allowed plus ``grace_s``; ok otherwise.
    """
    if retired:
        return "done"
    if ticked_at is None:
        return "waiting"
    if not thread_alive:
        return "dead"
    if now > due_by + grace_s:
        return "stalled"
    return "ok"


class Beat:
    """One thread's progress stamp (see the module docstring)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._stamp: tuple[float, float] | None = None  # (ticked at, due by)
        self._ticks = 0
        self._thread: threading.Thread | None = None
        self._retired = False

    def tick(self, allow_s: float = 0.0) -> None:
        """Progress now; the next tick may take ``allow_s`` (plus the registry's grace)."""
        now = self._clock()
        self._stamp = (now, now + max(0.0, allow_s))
        self._ticks += 1
        if self._thread is None:
            self._thread = threading.current_thread()

    def retire(self) -> None:
        """The thread ends on purpose: it no longer counts against liveness."""
        self._retired = True

    def stats(self, now: float, grace_s: float) -> BeatStats:
        stamp, thread = self._stamp, self._thread
        alive = thread is None or thread.is_alive()
        state = beat_state(
            ticked_at=stamp[0] if stamp else None,
            due_by=stamp[1] if stamp else now,
            now=now,
            grace_s=grace_s,
            thread_alive=alive,
            retired=self._retired,
        )
        return BeatStats(
            name=self.name,
            state=state,
            ticks=self._ticks,
            silent_s=round(now - stamp[0], 3) if stamp else None,
        )


class _NullBeat(Beat):
    """A beat nobody watches: the default of components built outside an :class:`App`."""

    def __init__(self) -> None:
        super().__init__("unwatched")

    def tick(self, allow_s: float = 0.0) -> None:
        pass

    def retire(self) -> None:
        pass


NULL_BEAT: Beat = _NullBeat()


@dataclass(frozen=True, slots=True)
class BeatStats:
    """One beat at one moment; ``silent_s`` since its last tick (None: never ticked)."""

    name: str
    state: BeatState
    ticks: int
    silent_s: float | None


@dataclass(frozen=True, slots=True)
class LivenessStats:
    """Every beat at one moment.

    ``started``: every beat has ticked at least once (or retired); ``healthy``: started and
    none stalled or dead; ``stalled``: names of the beats stalled or dead.
    """

    beats: tuple[BeatStats, ...]
    started: bool
    healthy: bool
    stalled: tuple[str, ...]


class Liveness:
    """The registry of beats. ``grace_s``: work allowed between two ticks beyond ``allow_s``."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if grace_s <= 0:
            raise ValueError("grace_s must be > 0")
        self.grace_s = grace_s
        self._clock = clock
        self._beats: list[Beat] = []
        self._lock = threading.Lock()

    def beat(self, name: str) -> Beat:
        """Register and return a new beat; ``name`` must be unique (it names the thread)."""
        with self._lock:
            if any(b.name == name for b in self._beats):
                raise ValueError(f"a beat named {name!r} is already registered")
            beat = Beat(name, self._clock)
            self._beats.append(beat)
            return beat

    def check(self) -> LivenessStats:
        now = self._clock()
        with self._lock:
            beats = tuple(b.stats(now, self.grace_s) for b in self._beats)
        stalled = tuple(b.name for b in beats if b.state in ("stalled", "dead"))
        started = all(b.state != "waiting" for b in beats)
        return LivenessStats(
            beats=beats, started=started, healthy=started and not stalled, stalled=stalled
        )

    def stats(self) -> LivenessStats:
        return self.check()
