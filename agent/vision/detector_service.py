"""One detector shared by every camera: one thread owns the onnxruntime session.

Cameras submit frames through their :class:`CameraClient`. Each camera has a one-request slot:
a newer frame replaces the pending one (the replaced request is cancelled and counted as
``dropped_busy``), so nothing queues without bound. The service thread picks the next camera
by earliest due time (the camera's last run plus ``1 / detect_fps``; on a tie, one with
motion first), which is a weighted round robin: a flooding camera only ever replaces its own
request, a slow or dead one holds nothing. ``max_fps`` bounds the runs per second of the whole
box so decoding keeps its share of the CPU. Results go back through a future, so tracking and
events stay in each camera's own worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.domain import Detections
from agent.errors import DetectorError
from agent.node.liveness import NULL_BEAT, Beat
from agent.vision.detector import Detector

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
_IDLE_WAIT_S = 1.0  # the longest the thread sleeps between liveness ticks


@dataclass(frozen=True, slots=True)
class DetectResult:
    """Detections of one submitted image and how long the model took on it."""

    detections: Detections
    inference_ms: float


@dataclass(frozen=True, slots=True)
class CameraDetectStats:
    """One camera's use of the shared detector."""

    camera_id: str
    submitted: int
    detected: int
    dropped_busy: int
    errors: int
    fps_detected: float
    inference_ms_p50: float | None
    inference_ms_p95: float | None


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """The shared detector as a whole: runs, errors, rate, budget, and each camera."""

    runs: int
    errors: int
    fps: float
    max_fps: float | None
    cameras: tuple[CameraDetectStats, ...]


@dataclass
class _Request:
    image: Image
    motion: bool
    future: Future[DetectResult]


@dataclass
class _Lane:
    camera_id: str
    interval_s: float
    order: int
    pending: _Request | None = None
    last_served: float = float("-inf")
    submitted: int = 0
    detected: int = 0
    dropped_busy: int = 0
    errors: int = 0
    ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    times: deque[float] = field(default_factory=deque)


def percentile(values: deque[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(values), q)), 2) if values else None


def rate(times: deque[float], now: float, window_s: float) -> float:
    """Events per second over the last ``window_s`` (``times`` trimmed in place)."""
    while times and now - times[0] > window_s:
        times.popleft()
    span = now - times[0] if len(times) > 1 else 0.0
    return round((len(times) - 1) / span, 2) if span > 0 else 0.0


class DetectorService:
    """The thread that runs ``detector`` for every camera (see the module docstring)."""

    def __init__(
        self,
        detector: Detector,
        *,
        max_fps: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rate_window_s: float = 10.0,
    ) -> None:
        if max_fps is not None and max_fps <= 0:
            raise ValueError("max_fps must be > 0 or None")
        self.detector = detector
        self.max_fps = max_fps
        self._clock = clock
        self._window = rate_window_s
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._stopped = False
        self._next_start = float("-inf")
        self._runs = self._errors = 0
        self._run_times: deque[float] = deque()
        self.run_starts: deque[float] = deque(maxlen=10_000)
        self.progress: Beat = NULL_BEAT  # ticked every loop (agent.node.liveness)
        self._thread = threading.Thread(target=self._run, name="detector", daemon=True)

    # -- cameras ----------------------------------------------------------------------------

    def client(self, camera_id: str, detect_fps: float) -> CameraClient:
        """Register a camera; its handle to the shared detector."""
        with self._cond:
            if camera_id in self._lanes:
                raise ValueError(f"camera {camera_id!r} is already registered")
            self._lanes[camera_id] = _Lane(camera_id, 1.0 / detect_fps, len(self._lanes))
        return CameraClient(self, camera_id)

    def submit(self, camera_id: str, image: Image, motion: bool) -> Future[DetectResult]:
        """Put ``image`` in the camera's slot, replacing (cancelling) a request still pending."""
        fut: Future[DetectResult] = Future()
        with self._cond:
            if self._stopped:
                fut.set_exception(DetectorError("the detector service is stopped"))
                return fut
            lane = self._lanes[camera_id]
            lane.submitted += 1
            if lane.pending is not None:
                lane.pending.future.cancel()
                lane.dropped_busy += 1
            lane.pending = _Request(image, motion, fut)
            self._cond.notify_all()
        return fut

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the run in progress; pending requests are cancelled."""
        with self._cond:
            self._stopped = True
            for lane in self._lanes.values():
                if lane.pending is not None:
                    lane.pending.future.cancel()
                    lane.pending = None
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread -------------------------------------------------------------------------

    def _pick(self) -> _Lane | None:
        ready = [lane for lane in self._lanes.values() if lane.pending is not None]
        if not ready:
            return None

        def key(lane: _Lane) -> tuple[float, bool, int]:
            assert lane.pending is not None
            return (lane.last_served + lane.interval_s, not lane.pending.motion, lane.order)

        return min(ready, key=key)

    def _take(self) -> tuple[_Lane, _Request] | None:
        """Wait for a request and for the budget; None once stopped."""
        with self._cond:
            while True:
                if self._stopped:
                    return None
                lane = self._pick()
                wait = self._next_start - self._clock()
                if lane is not None and wait <= 0:
                    req, lane.pending = lane.pending, None
                    assert req is not None
                    now = self._clock()
                    lane.last_served = now
                    if self.max_fps is not None:
                        self._next_start = now + 1.0 / self.max_fps
                    self.run_starts.append(now)
                    return lane, req
                self.progress.tick(_IDLE_WAIT_S)
                idle = lane is None or wait > _IDLE_WAIT_S
                self._cond.wait(timeout=_IDLE_WAIT_S if idle else wait)

    def _run(self) -> None:
        self._serve()
        self.progress.retire()  # stopped on purpose (a crash leaves the beat dead)

    def _serve(self) -> None:
        while True:
            self.progress.tick(_IDLE_WAIT_S)
            taken = self._take()
            if taken is None:
                return
            lane, req = taken
            if not req.future.set_running_or_notify_cancel():
                continue
            started = time.perf_counter()
            try:
                dets = self.detector.detect(req.image)
            except Exception as exc:  # noqa: BLE001 - thread top: the camera gets the error
                self._finish_error(lane, req, exc)
                continue
            ms = (time.perf_counter() - started) * 1000
            with self._cond:
                now = self._clock()
                self._runs += 1
                self._run_times.append(now)
                lane.detected += 1
                lane.ms.append(ms)
                lane.times.append(now)
            req.future.set_result(DetectResult(dets, ms))

    def _finish_error(self, lane: _Lane, req: _Request, exc: Exception) -> None:
        with self._cond:
            self._errors += 1
            lane.errors += 1
        if not isinstance(exc, DetectorError):
            log.error("camera %s: detector failed: %r", lane.camera_id, exc)
            exc = DetectorError(f"detector failed: {exc}")
        req.future.set_exception(exc)

    # -- stats ------------------------------------------------------------------------------

    def camera_stats(self, camera_id: str) -> CameraDetectStats:
        with self._cond:
            return self._lane_stats(self._lanes[camera_id], self._clock())

    def _lane_stats(self, lane: _Lane, now: float) -> CameraDetectStats:
        return CameraDetectStats(
            camera_id=lane.camera_id,
            submitted=lane.submitted,
            detected=lane.detected,
            dropped_busy=lane.dropped_busy,
            errors=lane.errors,
            fps_detected=rate(lane.times, now, self._window),
            inference_ms_p50=percentile(lane.ms, 50),
            inference_ms_p95=percentile(lane.ms, 95),
        )

    def stats(self) -> ServiceStats:
        with self._cond:
            now = self._clock()
            return ServiceStats(
                runs=self._runs,
                errors=self._errors,
                fps=rate(self._run_times, now, self._window),
                max_fps=self.max_fps,
                cameras=tuple(self._lane_stats(lane, now) for lane in self._lanes.values()),
            )


class CameraClient:
    """One camera's handle on the :class:`DetectorService`; also a plain ``Detector``.

    ``detect`` submits and waits (at most ``wait_s``); ``submit`` returns the future at once.
    """

    def __init__(self, service: DetectorService, camera_id: str, wait_s: float = 60.0) -> None:
        self._service = service
        self.camera_id = camera_id
        self.wait_s = wait_s

    @property
    def family(self) -> str:
        return self._service.detector.family

    @property
    def input_size(self) -> tuple[int, int]:
        return self._service.detector.input_size

    def submit(self, image: Image, motion: bool = True) -> Future[DetectResult]:
        return self._service.submit(self.camera_id, image, motion)

    def detect_timed(self, image: Image, motion: bool = True) -> DetectResult:
        """Submit and wait for the result; :class:`DetectorError` if it does not come."""
        fut = self.submit(image, motion)
        try:
            return fut.result(timeout=self.wait_s)
        except FutureTimeout as exc:
            fut.cancel()
            raise DetectorError(f"no detection result within {self.wait_s:g} s") from exc
        except CancelledError as exc:
            raise DetectorError("detection request cancelled (detector stopping)") from exc

    def detect(self, image: Image) -> Detections:
        return self.detect_timed(image).detections

    def stats(self) -> CameraDetectStats:
        return self._service.camera_stats(self.camera_id)

    def close(self) -> None:
        """Nothing: the service owns the detector."""
