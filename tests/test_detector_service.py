"""The shared detector service: newest frame per camera, fairness, budget, errors, stop.

The detector is a hand-written fake that blocks until the test releases it, so every count
below is exact.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.config import EventsConfig
from agent.domain import Detections, Frame
from agent.errors import DetectorError
from agent.node.liveness import Beat
from agent.vision.detector_service import DetectorService
from agent.vision.events import EventBuilder
from agent.vision.metrics import PipelineCounters
from agent.vision.pipeline import CameraPipeline
from agent.vision.tracker import Tracker
from tests.fakes import ListSink

IMAGE = np.zeros((32, 32, 3), np.uint8)


class GatedDetector:
    """Runs one detection per :meth:`release`; records which image (by its first pixel) ran."""

    family = "fake"
    input_size = (32, 32)

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.ran: list[int] = []
        self.started = threading.Semaphore(0)
        self._go = threading.Semaphore(0)
        self._fail_on = fail_on or set()

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._go.release()

    def detect(self, image):
        self.started.release()
        assert self._go.acquire(timeout=10)
        tag = int(image[0, 0, 0])
        self.ran.append(tag)
        if tag in self._fail_on:
            raise DetectorError(f"scripted failure on image {tag}")
        return Detections.empty()

    def close(self) -> None:
        pass


def img(tag: int) -> np.ndarray:
    out = IMAGE.copy()
    out[0, 0, 0] = tag
    return out


@pytest.fixture
def service():
    det = GatedDetector(fail_on={66})
    svc = DetectorService(det)
    yield svc, det
    det.release(100)
    svc.stop()


def test_a_newer_frame_replaces_the_pending_one_and_is_counted(service):
    svc, det = service
    a = svc.client("a", detect_fps=5)
    svc.start()
    first = a.submit(img(1))
    assert det.started.acquire(timeout=5)  # 1 is running; 2, 3, 4 queue behind it
    stale = [a.submit(img(n)) for n in (2, 3)]
    newest = a.submit(img(4))
    det.release(2)
    assert first.result(timeout=5).detections is not None
    assert newest.result(timeout=5) is not None
    assert all(f.cancelled() for f in stale)
    assert det.ran == [1, 4]
    stats = a.stats()
    assert (stats.submitted, stats.detected, stats.dropped_busy) == (4, 2, 2)


def test_a_flooding_camera_gets_no_more_than_its_turn(service):
    svc, det = service
    flood, quiet = svc.client("flood", detect_fps=5), svc.client("quiet", detect_fps=5)
    svc.start()
    flood.submit(img(1))
    assert det.started.acquire(timeout=5)
    for _ in range(3):  # while the detector works, flood resubmits, quiet waits its turn
        q = quiet.submit(img(2))
        for _ in range(50):
            flood.submit(img(1))
        det.release()
        assert det.started.acquire(timeout=5)
        det.release()
        assert q.result(timeout=5) is not None
        assert det.started.acquire(timeout=5)
    det.release(1)
    assert det.ran.count(2) == 3
    assert det.ran.count(1) <= 4
    assert flood.stats().dropped_busy >= 140


def test_a_failed_detection_reaches_its_camera_and_the_service_goes_on(service):
    svc, det = service
    a, b = svc.client("a", detect_fps=5), svc.client("b", detect_fps=5)
    svc.start()
    det.release(2)
    with pytest.raises(DetectorError, match="scripted failure"):
        a.detect_timed(img(66))
    assert b.detect_timed(img(7)).detections is not None
    assert (a.stats().errors, b.stats().errors, svc.stats().runs) == (1, 0, 1)


def test_a_camera_that_never_collects_its_results_stalls_no_one(service):
    svc, det = service
    dead, live = svc.client("dead", detect_fps=5), svc.client("live", detect_fps=5)
    svc.start()
    det.release(11)
    dead.submit(img(9))  # its worker died: nobody ever reads this future
    for n in range(10):
        assert live.detect_timed(img(n)).detections is not None
    assert live.stats().detected == 10


def test_stop_cancels_pending_requests_as_detector_errors():
    det = GatedDetector()
    svc = DetectorService(det)
    a = svc.client("a", detect_fps=5)
    svc.start()
    a.submit(img(1))
    assert det.started.acquire(timeout=5)
    pending = a.submit(img(2))
    waiter = threading.Thread(target=svc.stop)
    waiter.start()
    det.release(5)
    waiter.join(10)
    assert pending.cancelled()
    with pytest.raises(DetectorError, match="stopped"):
        a.detect_timed(img(3))


def test_a_camera_id_registers_once(service):
    svc, _ = service
    svc.client("a", detect_fps=5)
    with pytest.raises(ValueError, match="already registered"):
        svc.client("a", detect_fps=5)


def test_the_detector_thread_ticks_its_liveness_beat_while_idle_and_retires_on_stop():
    svc = DetectorService(GatedDetector())
    svc.progress = Beat("detector")
    svc.start()
    ticked = threading.Event()
    for _ in range(50):  # the first tick comes at once; poll without a timed assertion
        if svc.progress.stats(now=0.0, grace_s=1.0).ticks > 0:
            ticked.set()
            break
        threading.Event().wait(0.05)
    assert ticked.is_set()
    svc.stop()
    assert svc.progress.stats(now=0.0, grace_s=1.0).state == "done"


def test_a_live_camera_pipeline_submits_without_waiting_and_applies_results_in_order():
    det = GatedDetector()
    svc = DetectorService(det)
    client = svc.client("cam", detect_fps=5)
    ev = EventsConfig()
    pipeline = CameraPipeline(
        client,
        Tracker(iou_match=ev.iou_match, min_hits=ev.min_hits, max_lost_s=ev.end_timeout_s),
        EventBuilder("cam", update_interval_s=10, min_move=0.25, snapshot_gain=0.1),
        ListSink(), PipelineCounters(), detect_fps=5, wait=False,
    )  # fmt: skip
    svc.start()
    try:
        pipeline.step(Frame("cam", 0, 0.0, 1.7e9, img(0)))
        assert det.started.acquire(timeout=5)  # 0 runs; 1 waits, 2 replaces it: no step blocks
        for i in (1, 2):
            pipeline.step(Frame("cam", i, i * 0.2, 1.7e9 + i * 0.2, img(i)))
        det.release(2)
        assert det.started.acquire(timeout=5)
        deadline = threading.Event()
        while pipeline.counters.snapshot(0.0).frames_detected < 2 and not deadline.wait(0.05):
            pipeline.collect()
        assert det.ran == [0, 2]
        assert pipeline.counters.snapshot(0.0).frames_detected == 2
        assert client.stats().dropped_busy == 1
    finally:
        det.release(10)
        svc.stop()
