"""The camera pipeline: detect_fps scheduling, errors, idle time, and the real clip at any speed."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from agent.capture.thread import FrameSlot
from agent.config import DetectorConfig, EventsConfig
from agent.domain import COCO_LABELS, Detections, Frame
from agent.vision.detector import load_detector
from agent.vision.events import EventBuilder
from agent.vision.metrics import PipelineCounters
from agent.vision.pipeline import CameraPipeline, CameraWorker
from agent.vision.tracker import Tracker
from tests.conftest import MEDIA, MODELS
from tests.fakes import FakeDetector, ListSink

IMAGE = np.zeros((480, 640, 3), np.uint8)
PERSON = Detections(
    np.array([[100, 100, 200, 300]], np.float32),
    np.array([0.9], np.float32),
    np.array([COCO_LABELS.index("person")], np.int64),
)


def pipeline(detector, *, detect_fps=5.0, events: EventsConfig | None = None):
    ev = events or EventsConfig()
    sink = ListSink()
    p = CameraPipeline(
        detector,
        Tracker(iou_match=ev.iou_match, min_hits=ev.min_hits, max_lost_s=ev.end_timeout_s),
        EventBuilder("cam", update_interval_s=ev.update_interval_s, min_move=ev.min_move,
                     snapshot_gain=ev.snapshot_gain),
        sink, PipelineCounters(), detect_fps=detect_fps,
    )  # fmt: skip
    return p, sink


def frame(i: int, ts: float) -> Frame:
    return Frame("cam", i, ts, 1.7e9 + ts, IMAGE)


@pytest.mark.parametrize(
    ("source_fps", "detect_fps", "seconds", "expected"),
    [
        (10, 5, 10, 50),
        (30, 5, 10, 50),
        (25, 5, 10, 50),
        (10, 10, 10, 100),
        (10, 20, 10, 100),  # cannot detect more often than frames arrive
        (30, 7, 10, 70),
        (12.5, 1, 10, 10),
    ],
)
def test_detect_fps_schedule_by_timestamps(source_fps, detect_fps, seconds, expected):
    p, _ = pipeline(FakeDetector(lambda i: Detections.empty()), detect_fps=detect_fps)
    n = int(source_fps * seconds)
    due = sum(p.due(i / source_fps) for i in range(n))
    assert abs(due - expected) <= 1


def test_detector_error_is_counted_and_the_pipeline_goes_on():
    det = FakeDetector(lambda i: PERSON, fail_on={1, 2})
    p, sink = pipeline(det)
    for i in range(10):
        p.step(frame(i, i * 0.2))
    stats = p.counters.snapshot(now=0.0)
    assert stats.errors == 2
    assert stats.frames_detected == 8
    assert sink.kinds() == [("person", "new")]


def test_idle_time_ends_events_of_a_live_camera_that_went_dark():
    p, sink = pipeline(FakeDetector(lambda i: PERSON))
    for i in range(5):
        p.step(frame(i, i * 0.2))
    assert sink.kinds() == [("person", "new")]
    p.idle(ts=0.8 + 3.0, wall_ts=1.7e9 + 3.8)  # camera down: not yet the end timeout
    assert sink.kinds() == [("person", "new")]
    p.idle(ts=0.8 + 4.5, wall_ts=1.7e9 + 5.3)
    assert sink.kinds() == [("person", "new"), ("person", "end")]
    assert sink.emissions[-1].event.end_ts == pytest.approx(1.7e9 + 0.8)


def test_worker_ends_open_events_when_the_file_finishes():
    slot = FrameSlot(lossless=True, name="fake")
    p, sink = pipeline(FakeDetector(lambda i: PERSON))
    worker = CameraWorker("cam", slot, p, live=False)
    worker.start()

    def produce():
        for i in range(10):
            slot.put(frame(i, i * 0.2))
        slot.finish()

    threading.Thread(target=produce, daemon=True).start()
    assert worker.finished.wait(10)
    assert sink.kinds() == [("person", "new"), ("person", "end")]


def real_clip_events(detect_fps: float) -> list[tuple[str, str]]:
    detector = load_detector(DetectorConfig(model=MODELS / "yolox_nano_416.onnx"))
    p, sink = pipeline(detector, detect_fps=detect_fps)
    cap = cv2.VideoCapture(str(MEDIA / "one-by-one-person-detection.mp4"))
    i = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        p.step(Frame("cam", i, i / 10, 1.7e9 + i / 10, image))
        i += 1
    p.finish()
    return [(e.event.event_id, e.event.label, e.event.type.value) for e in sink.emissions]


@pytest.mark.slow
@pytest.mark.parametrize("detect_fps", [2.5, 10.0])
def test_six_visits_whatever_the_detection_rate(detect_fps):
    """Six person visits, each one new and one end, at a quarter or all of the clip's frames.

    (A visitor may arrive before the previous one's end timeout: their messages interleave.)
    """
    evs = real_clip_events(detect_fps)
    assert {label for _, label, _ in evs} == {"person"}
    visits = {eid for eid, _, _ in evs}
    assert len(visits) == 6
    for eid in visits:
        kinds = [k for e, _, k in evs if e == eid]
        assert kinds[0] == "new"
        assert kinds[-1] == "end"
        assert kinds.count("new") == kinds.count("end") == 1
