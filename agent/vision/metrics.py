"""Pipeline counters, written by one camera worker and read by the heartbeat thread."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """What one camera's detection pipeline did, as the heartbeat reports it."""

    frames_detected: int
    frames_skipped: int
    fps_detected: float
    inference_ms_p50: float | None
    inference_ms_p95: float | None
    events: int
    visits: int
    errors: int
    emit_failures: int
    skipped_no_motion: int = 0


class PipelineCounters:
    """Thread-safe counters with a sliding window for rates and inference times.

    Rates use the caller's monotonic clock, passed in, so tests need no real time.
    """

    def __init__(self, window: int = 200, rate_window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._ms: deque[float] = deque(maxlen=window)
        self._times: deque[float] = deque()
        self._rate_window_s = rate_window_s
        self._detected = self._skipped = self._events = self._errors = 0
        self._visits = self._emit_failures = self._no_motion = 0

    def detected(self, now: float, inference_ms: float) -> None:
        with self._lock:
            self._detected += 1
            self._ms.append(inference_ms)
            self._times.append(now)
            self._trim(now)

    def skipped(self, n: int = 1) -> None:
        with self._lock:
            self._skipped += n

    def no_motion(self, n: int = 1) -> None:
        """A due frame not detected on: nothing moved and nothing needed confirming."""
        with self._lock:
            self._no_motion += n

    def emitted(self, n: int = 1, visits: int = 0) -> None:
        """``n`` event messages committed, ``visits`` of them ``new``."""
        with self._lock:
            self._events += n
            self._visits += visits

    def emit_failed(self) -> None:
        """An event message could not be committed (it is proposed again later)."""
        with self._lock:
            self._emit_failures += 1

    def error(self) -> None:
        with self._lock:
            self._errors += 1

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._rate_window_s:
            self._times.popleft()

    def snapshot(self, now: float) -> PipelineStats:
        with self._lock:
            self._trim(now)
            span = now - self._times[0] if len(self._times) > 1 else 0.0
            fps = (len(self._times) - 1) / span if span > 0 else 0.0
            ms = np.array(self._ms) if self._ms else None
            return PipelineStats(
                frames_detected=self._detected,
                frames_skipped=self._skipped,
                fps_detected=round(fps, 2),
                inference_ms_p50=None if ms is None else round(float(np.percentile(ms, 50)), 2),
                inference_ms_p95=None if ms is None else round(float(np.percentile(ms, 95)), 2),
                events=self._events,
                visits=self._visits,
                errors=self._errors,
                emit_failures=self._emit_failures,
                skipped_no_motion=self._no_motion,
            )
