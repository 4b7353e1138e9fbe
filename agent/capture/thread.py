"""One capture thread per camera: it owns the source, keeps it open, and hands frames over
through a one-frame :class:`FrameSlot`.

Failures (open, read, or no frame for ``read_timeout_s``) close the source and reopen it with
capped, jittered exponential backoff (tenacity), forever until :meth:`CaptureThread.stop`.
The consumer sees frames through :meth:`FrameSlot.get` and health through
:meth:`CaptureThread.status`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

import tenacity

from agent.capture.sources import Clock, FrameSource, SystemClock, is_lossless, make_source
from agent.config import CameraConfig
from agent.domain import Frame
from agent.errors import SourceError, SourceFinished
from agent.node.liveness import NULL_BEAT, Beat
from agent.node.redact import redact_url

log = logging.getLogger(__name__)

SourceState = Literal["starting", "online", "reconnecting", "finished", "stopped"]
_Outcome = Literal["stopped", "finished", "dropped"]


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A snapshot of one capture thread's health.

    ``state``: starting (first open/first frame pending), online (frames flowing),
    reconnecting (a failure or a stale source; reopening with backoff), finished (a
    non-looping file ended), stopped (the thread was stopped). ``reconnects`` counts reopen
    attempts after the first open; ``frames_in`` frames read from the source;
    ``frames_dropped`` frames overwritten in the slot before the consumer took them; ``fps_in``
    the read rate over the last few seconds; ``last_error`` the latest failure (redacted);
    ``since`` the monotonic time of the last state change; ``internal_errors`` unexpected
    exceptions caught at the thread top (bugs).
    """

    state: SourceState
    reconnects: int
    frames_in: int
    frames_dropped: int
    fps_in: float
    last_error: str | None
    since: float
    internal_errors: int = 0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``min(initial_s * 2**(n-1), max_s) + uniform(0, jitter_s)`` before
    attempt ``n+1``. A source that stayed online ``healthy_after_s`` starts again at once."""

    initial_s: float = 1.0
    max_s: float = 30.0
    jitter_s: float = 1.0
    healthy_after_s: float = 10.0

    def strategy(self) -> tenacity.wait.wait_base:
        return tenacity.wait_exponential(
            multiplier=self.initial_s, max=self.max_s
        ) + tenacity.wait_random(0, self.jitter_s)


class FrameSlot:
    """Hands frames from the capture thread to one consumer, holding at most one frame.

    Lossy (live sources, realtime files): ``put`` overwrites an unconsumed frame and counts it
    in ``dropped``. Lossless (``realtime: false`` files): ``put`` waits until the consumer took
    the previous frame, so every frame arrives, in order.

    End of a finite source: after :meth:`finish`, :meth:`get` returns the frames still held and
    then raises :class:`SourceFinished` on every call.
    """

    def __init__(self, lossless: bool = False, name: str = "source") -> None:
        self.lossless = lossless
        self._name = name
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._finished = False
        self._closed = False
        self._dropped = 0

    @property
    def dropped(self) -> int:
        with self._cond:
            return self._dropped

    def put(self, frame: Frame) -> bool:
        """Producer: offer a frame; False (frame not stored) once the slot is closed."""
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: self._frame is None or self._closed)
            if self._closed:
                return False
            if self._frame is not None:
                self._dropped += 1
            self._frame = frame
            self._cond.notify_all()
            return True

    def finish(self) -> None:
        """Producer: no frame will follow."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def close(self) -> None:
        """Wake a producer blocked in :meth:`put` and refuse later puts (consumer unaffected)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """Consumer: the newest frame, waiting up to ``timeout`` s (None: forever).

        Returns None on timeout; raises :class:`SourceFinished` once the source has finished
        and its last frame was taken.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._finished, timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cond.notify_all()
                return frame
            if self._finished:
                raise SourceFinished(f"{self._name}: finished")
            return None


class _Monitor:
    """The capture thread's bookkeeping behind one lock, turned into :class:`SourceStatus`."""

    def __init__(self, name: str, clock: Clock, fps_window_s: float) -> None:
        self._name = name
        self._clock = clock
        self._window_s = fps_window_s
        self._lock = threading.Lock()
        self._state: SourceState = "starting"
        self._since = clock.monotonic()
        self._opens = 0
        self._frames = 0
        self._times: deque[float] = deque(maxlen=512)
        self._error: str | None = None
        self._internal = 0
        self._reading: tuple[float, float] | None = None  # (read started, time budget)

    def set_state(self, state: SourceState, error: str | None = None) -> None:
        with self._lock:
            if state != self._state:
                self._state, self._since = state, self._clock.monotonic()
            if error is not None:
                self._error = error

    def opening(self) -> None:
        with self._lock:
            self._opens += 1

    def internal_error(self, error: str) -> None:
        with self._lock:
            self._internal += 1
            self._error = error

    def begin_read(self, budget_s: float) -> None:
        with self._lock:
            self._reading = (self._clock.monotonic(), budget_s)

    def end_read(self) -> float:
        """Seconds the read took."""
        now = self._clock.monotonic()
        with self._lock:
            started = self._reading[0] if self._reading else now
            self._reading = None
        return now - started

    def frame_in(self) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self._frames += 1
            self._times.append(now)
            came_back = self._state != "online"
            if came_back:
                previous, self._state, self._since = self._state, "online", now
        if came_back:
            log.info("%s: online (was %s, %d reconnect(s) so far)", self._name, previous,
                     max(0, self._opens - 1))  # fmt: skip

    def snapshot(self, dropped: int) -> SourceStatus:
        now = self._clock.monotonic()
        with self._lock:
            state, since, error = self._state, self._since, self._error
            if state == "online" and self._reading is not None:
                started, budget = self._reading
                if now - started > budget:  # the watchdog: a read is hanging
                    state, since = "reconnecting", started + budget
                    error = f"{self._name}: no frame for {budget:g} s"
            return SourceStatus(
                state=state,
                reconnects=max(0, self._opens - 1),
                frames_in=self._frames,
                frames_dropped=dropped,
                fps_in=self._fps(now),
                last_error=error,
                since=since,
                internal_errors=self._internal,
            )

    def _fps(self, now: float) -> float:
        times = self._times
        while times and times[0] < now - self._window_s:
            times.popleft()
        if len(times) < 2 or now <= times[0]:
            return 0.0
        return (len(times) - 1) / (now - times[0])


class CaptureThread:
    """Owns one :class:`FrameSource` on one thread and keeps frames flowing into :attr:`slot`.

    A read that takes longer than ``read_timeout_s`` (the first one after an open:
    ``max(open_timeout_s, read_timeout_s)``) counts as a failure, and :meth:`status` reports
    ``reconnecting`` as soon as that time has passed, even while the read still hangs.
    :meth:`stop` is prompt except inside a blocking ``read()``, which the source's own
    timeouts bound.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        lossless: bool = False,
        read_timeout_s: float = 10.0,
        open_timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        clock: Clock | None = None,
        fps_window_s: float = 5.0,
        thread_name: str = "capture",
    ) -> None:
        self._source = source
        self._read_timeout_s = read_timeout_s
        self._first_read_s = max(read_timeout_s, open_timeout_s)
        self._backoff = backoff or Backoff()
        self._clock = clock or SystemClock()
        self._stop = threading.Event()
        self._slot = FrameSlot(lossless, source.name)
        self._monitor = _Monitor(source.name, self._clock, fps_window_s)
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.progress: Beat = NULL_BEAT  # ticked by the capture thread (agent.node.liveness)

    @classmethod
    def for_camera(
        cls, cfg: CameraConfig, *, clock: Clock | None = None, backoff: Backoff | None = None
    ) -> CaptureThread:
        """The capture thread for a configured camera (lossless for non-realtime files)."""
        clock = clock or SystemClock()
        return cls(
            make_source(cfg, clock),
            lossless=is_lossless(cfg),
            read_timeout_s=cfg.read_timeout_s,
            open_timeout_s=cfg.open_timeout_s,
            backoff=backoff,
            clock=clock,
            thread_name=f"capture-{cfg.id}",
        )

    @property
    def slot(self) -> FrameSlot:
        return self._slot

    @property
    def name(self) -> str:
        return self._source.name

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (does not wait: see :meth:`join`)."""
        self._stop.set()
        self._slot.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def status(self) -> SourceStatus:
        return self._monitor.snapshot(self._slot.dropped)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    if self._supervise():
                        break
                except Exception as exc:  # thread top: log, count, back off, carry on
                    message = f"{self.name}: unexpected {type(exc).__name__}: {exc}"
                    log.exception("%s", redact_url(message))
                    self._monitor.internal_error(redact_url(message))
                    self._monitor.set_state("reconnecting")
                    self.progress.tick(self._backoff.max_s)
                    self._stop.wait(self._backoff.max_s)
        finally:
            self.progress.retire()
            if self.status().state != "finished":
                self._monitor.set_state("stopped")

    def _supervise(self) -> bool:
        """Open and pump until stopped, finished or dropped; True when the thread should end.

        Each call starts tenacity's attempt count afresh, so only a source that failed
        again and again waits long.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(SourceError),
            wait=self._backoff.strategy(),
            stop=lambda _state: self._stop.is_set(),
            sleep=self._sleep,
            before_sleep=self._on_retry,
            reraise=True,
        )
        try:
            outcome: _Outcome = retrying(self._session)
        except SourceError:  # stopped while failing
            return True
        return outcome != "dropped"

    def _sleep(self, seconds: float) -> None:
        self.progress.tick(seconds)
        self._stop.wait(seconds)

    def _session(self) -> _Outcome:
        if self._stop.is_set():
            return "stopped"
        self._monitor.opening()
        self.progress.tick(self._first_read_s)  # open() is bounded by the open timeout
        try:
            self._source.open()
            return self._pump()
        except SourceFinished:
            log.info("%s: finished", self.name)
            self._slot.finish()
            self._monitor.set_state("finished")
            return "finished"
        finally:
            self._source.close()

    def _pump(self) -> _Outcome:
        online_at: float | None = None
        while not self._stop.is_set():
            try:
                frame = self._read(first=online_at is None)
            except SourceFinished:
                raise
            except SourceError as exc:
                healthy_s = self._backoff.healthy_after_s
                if online_at is None or self._clock.monotonic() - online_at < healthy_s:
                    raise
                self._failed(exc, "reconnecting now")
                return "dropped"
            online_at = self._clock.monotonic() if online_at is None else online_at
            self._monitor.frame_in()
            if not self._slot.put(frame):
                break
        return "stopped"

    def _read(self, *, first: bool) -> Frame:
        budget = self._first_read_s if first else self._read_timeout_s
        self.progress.tick(budget)
        self._monitor.begin_read(budget)
        try:
            frame = self._source.read()
        finally:
            took = self._monitor.end_read()
        if took > budget:
            raise SourceError(f"{self.name}: no frame for {took:.1f} s (limit {budget:g} s)")
        return frame

    def _on_retry(self, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        attempt = retry_state.attempt_number
        self._failed(exc, f"retrying in {delay:.1f} s (attempt {attempt})")

    def _failed(self, exc: BaseException | None, then: str) -> None:
        text = str(exc) if exc is not None else "failed"
        if not text.startswith(self.name):
            text = f"{self.name}: {text}"
        text = redact_url(text)
        self._monitor.set_state("reconnecting", text)
        log.warning("%s; %s", text, then)
