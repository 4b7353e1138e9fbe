"""One camera's detection pipeline: frames -> detector -> tracker -> event builder -> sink.

:class:`CameraPipeline` is plain and synchronous (``step(frame)``), so a file plays back
deterministically at any speed; :class:`CameraWorker` is the thread that feeds it from the
camera's capture slot.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from agent.domain import Detections, EndReason, EventType, Frame, Track
from agent.errors import DetectorError, OutboxError, SourceFinished
from agent.node.liveness import NULL_BEAT, Beat
from agent.vision.detector import Detector
from agent.vision.detector_service import DetectResult
from agent.vision.events import Emission, EventBuilder
from agent.vision.gate import MotionGate, Reason
from agent.vision.metrics import PipelineCounters
from agent.vision.regions import Region
from agent.vision.scene import CameraScene
from agent.vision.tracker import Tracker

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where emissions go: in the agent, the durable outbox.

    ``emit`` returns once the emission is stored, or raises :class:`OutboxError` when
    nothing was (the pipeline then proposes the same change again later).
    """

    def emit(self, emission: Emission) -> None: ...


class FrameFeed(Protocol):
    """The consumer side of a capture thread's frame slot."""

    def get(self, timeout: float) -> Frame | None:
        """The next frame, None on timeout; raises SourceFinished after a file's last frame."""
        ...


@runtime_checkable
class SharedDetector(Protocol):
    """A camera's handle on the shared detector service (see agent.vision.detector_service)."""

    def submit(self, image: npt.NDArray[np.uint8], motion: bool = True) -> Future[DetectResult]:
        """Queue ``image`` (replacing this camera's pending one); its result later."""
        ...

    def detect_timed(self, image: npt.NDArray[np.uint8], motion: bool = True) -> DetectResult:
        """Submit and wait."""
        ...


def in_frame(dets: Detections, region: Region | None) -> Detections:
    """Detections found in a crop, moved to pixels of the whole frame."""
    if region is None or not len(dets):
        return dets
    offset = np.array([region.x1, region.y1, region.x1, region.y1], np.float32)
    return dataclasses.replace(dets, xyxy=dets.xyxy + offset)


def crop(image: npt.NDArray[np.uint8], region: Region | None) -> npt.NDArray[np.uint8]:
    if region is None:
        return image
    return np.ascontiguousarray(image[region.y1 : region.y2, region.x1 : region.x2])


@dataclasses.dataclass(frozen=True, slots=True)
class _Pending:
    future: Future[DetectResult]
    frame: Frame
    region: Region | None


class CameraPipeline:
    """Detect on frames due at ``detect_fps`` (by frame timestamp), track, build events.

    With a ``gate``, a due frame is detected on only when the motion gate says so (else it is
    counted as skipped for no motion), on the crop the gate chose. With ``wait=False`` and a
    :class:`SharedDetector`, frames are submitted without waiting and each result is applied
    on a later step, in order (live cameras: the worker keeps up with the camera).
    """

    def __init__(
        self,
        detector: Detector,
        tracker: Tracker,
        builder: EventBuilder,
        sink: EventSink,
        counters: PipelineCounters,
        *,
        detect_fps: float,
        clock: Callable[[], float] = time.monotonic,
        gate: MotionGate | None = None,
        wait: bool = True,
        scene: CameraScene | None = None,
    ) -> None:
        self.detector = detector
        self.scene = scene
        self.gate = gate
        self.wait = wait or not isinstance(detector, SharedDetector)
        self._tracks: list[Track] = []
        self._pending: deque[_Pending] = deque()
        self.tracker = tracker
        self.builder = builder
        self.sink = sink
        self.counters = counters
        self.interval = 1.0 / detect_fps
        self._clock = clock
        self._next_due: float | None = None
        self._last: Frame | None = None
        self._last_failure_log = float("-inf")

    def due(self, ts: float) -> bool:
        """Whether a frame at ``ts`` should be detected on; advances the schedule if so."""
        nxt = self._next_due
        if nxt is not None and ts + 1e-3 < nxt:
            return False
        late = nxt is None or ts - nxt >= self.interval
        self._next_due = ts + self.interval if late or nxt is None else nxt + self.interval
        return True

    def step(self, frame: Frame) -> list[Emission]:
        """Process one frame; the emissions it caused (already handed to the sink)."""
        out = self.collect()
        if not self.due(frame.ts):
            self.counters.skipped()
            return out
        if self.scene is not None:  # privacy masks: before detection, snapshots, anything
            frame = self.scene.prepare(frame)
        region: Region | None = None
        motion = True
        if self.gate is not None:
            decision = self.gate.assess(frame, self._tracks)
            if not decision.run:
                self.counters.no_motion()
                return out
            region = decision.region
            motion = decision.reason is Reason.MOTION
        if not self.wait and isinstance(self.detector, SharedDetector):
            future = self.detector.submit(crop(frame.image, region), motion)
            self._pending.append(_Pending(future, frame, region))
            return out
        result = self._detect(frame, region, motion)
        if result is None:
            return out
        return out + self._apply(frame, in_frame(result.detections, region), result.inference_ms)

    def _detect(self, frame: Frame, region: Region | None, motion: bool) -> DetectResult | None:
        started = time.perf_counter()
        try:
            if isinstance(self.detector, SharedDetector):
                return self.detector.detect_timed(crop(frame.image, region), motion)
            dets = self.detector.detect(crop(frame.image, region))
        except DetectorError:
            self.counters.error()
            log.exception("camera %s: detection failed on frame %d", frame.camera_id, frame.index)
            return None
        return DetectResult(dets, (time.perf_counter() - started) * 1000)

    def collect(self) -> list[Emission]:
        """Apply the shared detector's finished results, oldest first (``wait=False``)."""
        out: list[Emission] = []
        while self._pending and self._pending[0].future.done():
            p = self._pending.popleft()
            if p.future.cancelled():
                continue  # replaced by a newer frame: counted by the service as dropped_busy
            try:
                result = p.future.result()
            except DetectorError:
                self.counters.error()
                log.exception("camera %s: detection failed on frame %d", p.frame.camera_id, p.frame.index)  # noqa: E501  # fmt: skip
                continue
            if self._last is not None and p.frame.ts < self._last.ts:
                continue  # idle time already moved past it
            out += self._apply(p.frame, in_frame(result.detections, p.region), result.inference_ms)
        return out

    def _apply(self, frame: Frame, dets: Detections, inference_ms: float) -> list[Emission]:
        self.counters.detected(self._clock(), inference_ms)
        self._last = frame
        self._tracks = self._track(dets, frame)
        return self._emit(self.builder.update(self._tracks, frame))

    def idle(self, ts: float, wall_ts: float) -> list[Emission]:
        """Advance time without a frame (live camera down): lets open events end on time."""
        out = self.collect()
        if self._last is None or ts <= self._last.ts:
            return out
        frame = dataclasses.replace(self._last, ts=ts, wall_ts=wall_ts)
        self._tracks = self._track(Detections.empty(), frame)
        self._last = frame
        return out + self._emit(self.builder.update(self._tracks, frame))

    def _track(self, dets: Detections, frame: Frame) -> list[Track]:
        """Object filters, tracker, zones (the scene's hooks around the tracker)."""
        if self.scene is None:
            return self.tracker.update(dets, frame.ts)
        dets = self.scene.filter(dets, frame.width, frame.height)
        tracks = self.tracker.update(dets, frame.ts)
        return self.scene.annotate(tracks, frame.ts, frame.width, frame.height)

    def finish(self, reason: EndReason = EndReason.SHUTDOWN) -> list[Emission]:
        """End every open event: the source finished or the agent is stopping.

        An ``end`` that cannot be committed now stays an open visit in the outbox, and the
        next start ends it (``end_reason`` restart).
        """
        for p in self._pending:
            p.future.cancel()
        self._pending.clear()
        return self._emit(self.builder.close(reason))

    def _emit(self, emissions: list[Emission]) -> list[Emission]:
        """Commit each proposal to the sink, then to the builder; the committed ones."""
        done: list[Emission] = []
        for em in emissions:
            try:
                self.sink.emit(em)
            except OutboxError as exc:
                self.counters.emit_failed()
                self._log_failure(em, exc)
                continue
            self.builder.commit(em)
            done.append(em)
        if done:
            news = sum(1 for em in done if em.event.type is EventType.NEW)
            self.counters.emitted(len(done), visits=news)
        return done

    def _log_failure(self, em: Emission, exc: OutboxError) -> None:
        now = self._clock()
        if now - self._last_failure_log >= 60.0:
            self._last_failure_log = now
            log.error(
                "camera %s: cannot store the %s of visit %s (%s); trying again on later frames",
                self.builder.camera, em.event.type.value, em.event.event_id, exc,
            )  # fmt: skip


class CameraWorker:
    """The thread that owns one camera's pipeline and feeds it from the capture slot."""

    def __init__(
        self,
        camera_id: str,
        feed: FrameFeed,
        pipeline: CameraPipeline,
        *,
        live: bool,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.camera_id = camera_id
        self.feed = feed
        self.pipeline = pipeline
        self.live = live
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._clock = clock
        self._wall = wall
        self._thread = threading.Thread(target=self._run, name=f"worker-{camera_id}", daemon=True)
        self.progress: Beat = NULL_BEAT  # ticked every iteration (agent.node.liveness)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        reason = EndReason.SHUTDOWN
        try:
            while not self._stop.is_set():
                self.progress.tick(1.0)  # a frame wait (0.5 s) or the error pause (1 s)
                if not self._once():
                    reason = EndReason.SOURCE_FINISHED
                    break
        finally:
            self._finish(reason)
            self.progress.retire()

    def _once(self) -> bool:
        """One frame (or one timeout); False when the source has finished."""
        try:
            frame = self.feed.get(timeout=0.5)
            if frame is not None:
                self.pipeline.step(frame)
            elif self.live:
                self.pipeline.idle(self._clock(), self._wall())
        except SourceFinished:
            log.info("camera %s: source finished", self.camera_id)
            return False
        except Exception:  # thread top: log, count, keep going without a tight loop
            self.pipeline.counters.error()
            log.exception("camera %s: pipeline error", self.camera_id)
            self._stop.wait(1.0)
        return True

    def _finish(self, reason: EndReason) -> None:
        try:
            self.pipeline.finish(reason)
        except Exception:  # thread top
            log.exception("camera %s: could not end open events", self.camera_id)
        finally:
            self.finished.set()
