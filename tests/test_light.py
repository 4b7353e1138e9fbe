"""Light enough for a Pi, on real footage and the real model: the motion gate keeps the same
events with far fewer detector runs, a static scene (with a light change) hardly runs it, and
several cameras share one detector service fairly, under a budget, whatever one camera does.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np
import pytest

from agent.capture.thread import CaptureThread
from agent.config import CameraConfig, DetectorConfig, load_settings
from agent.domain import Frame
from agent.vision.assembly import detector_config
from agent.vision.assembly import make_pipeline as assemble
from agent.vision.detector import load_detector
from agent.vision.detector.session import choose_providers
from agent.vision.detector_service import DetectorService
from agent.vision.metrics import PipelineCounters
from agent.vision.pipeline import CameraPipeline, CameraWorker
from bench.light_agent import max_runs_per_s
from bench.regions import compare_regions
from tests.conftest import MEDIA, MODELS
from tests.fakes import ListSink

CLIP = MEDIA / "one-by-one-person-detection.mp4"
MODEL = MODELS / "yolox_nano_416.onnx"


def settings_for(camera: str = "cam", *, gated: bool = True, detect_fps: float = 5.0):
    return load_settings(
        None, node_id="light", commune_id="test",
        cameras=[{"id": camera, "source": str(CLIP), "detect_fps": detect_fps,
                  "motion": {"enabled": gated}}],
        detector={"model": str(MODEL)},
    )  # fmt: skip


def agent_detector():
    """The detector as the agent loads it (thresholds lowered for the tracker's second pass)."""
    return load_detector(detector_config(settings_for()))


def make_pipeline(
    detector, *, gated: bool, wait: bool = True, camera: str = "cam", detect_fps: float = 5.0
):
    """The camera pipeline exactly as the agent builds it (agent.vision.assembly)."""
    settings = settings_for(camera, gated=gated, detect_fps=detect_fps)
    sink = ListSink()
    p = assemble(settings, settings.cameras[0], detector, sink, PipelineCounters(), wait=wait)
    return p, sink


def visits(sink: ListSink) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in sink.emissions:
        out.setdefault(e.event.event_id, []).append(f"{e.event.label}:{e.event.type.value}")
    return out


def assert_six_person_visits(sink: ListSink) -> None:
    v = visits(sink)
    assert len(v) == 6, v
    for kinds in v.values():
        assert kinds[0] == "person:new"
        assert kinds[-1] == "person:end"
        assert all(k.startswith("person:") for k in kinds)
        assert kinds.count("person:new") == kinds.count("person:end") == 1


def play(p: CameraPipeline, frames) -> None:
    for i, image in enumerate(frames):
        p.step(Frame("cam", i, i / 10, 1.7e9 + i / 10, image))
    p.finish()


def clip_frames():
    cap = cv2.VideoCapture(str(CLIP))
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            yield image
    finally:
        cap.release()


@pytest.mark.slow
def test_the_gate_keeps_the_six_visits_with_three_times_fewer_detector_runs():
    detector = agent_detector()
    gated, gated_sink = make_pipeline(detector, gated=True)
    plain, plain_sink = make_pipeline(detector, gated=False)
    for i, image in enumerate(clip_frames()):
        frame = Frame("cam", i, i / 10, 1.7e9 + i / 10, image)
        gated.step(frame)
        plain.step(frame)
    gated.finish()
    plain.finish()
    assert_six_person_visits(gated_sink)
    assert_six_person_visits(plain_sink)
    g, u = gated.counters.snapshot(0.0), plain.counters.snapshot(0.0)
    assert g.frames_detected * 3 <= u.frames_detected, (g, u)
    assert g.frames_detected + g.skipped_no_motion == u.frames_detected
    # the same visits, at about the same times (a detection at 1 Hz may move an edge by 1 s)
    starts = sorted(e.event.start_ts for e in gated_sink.emissions if e.event.type.value == "new")
    plain_starts = sorted(
        e.event.start_ts for e in plain_sink.emissions if e.event.type.value == "new"
    )
    assert np.allclose(starts, plain_starts, atol=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("detect_fps", [1.0, 1.5])
def test_the_gate_keeps_the_six_visits_at_a_budget_rate(detect_fps):
    """About what each of four cameras gets from a Pi 4's detector (max_fps 6)."""
    p, sink = make_pipeline(agent_detector(), gated=True,
                            detect_fps=detect_fps)  # fmt: skip
    play(p, clip_frames())
    assert_six_person_visits(sink)


def test_a_static_scene_with_a_light_change_almost_never_runs_the_detector():
    """Two minutes of an empty room (sensor noise), a lamp switching on halfway."""
    empty = next(iter(clip_frames()))
    rng = np.random.default_rng(1)
    lamp = np.linspace(0.5, 1.5, empty.shape[1])[None, :, None]
    lit = np.clip(empty * lamp, 0, 255).astype(np.uint8)

    def frames():
        for i in range(1200):
            base = empty if i < 600 else lit
            noise = rng.normal(0, 2, base.shape)
            yield np.clip(base + noise, 0, 255).astype(np.uint8)

    detector = agent_detector()
    p, sink = make_pipeline(detector, gated=True)
    play(p, frames())
    stats = p.counters.snapshot(0.0)
    # the first frame and the 30 s refresh of a 120 s clip: 5 of 600 due frames
    assert stats.frames_detected <= 5
    assert stats.skipped_no_motion >= 595
    assert sink.emissions == []


@pytest.mark.slow
def test_three_cameras_share_one_detector_under_a_budget_and_a_flood_stalls_none():
    """Three cameras on the clip (realtime false) through one service capped at 25 runs/s,
    beside a camera that floods the service and one whose worker died after one frame."""
    detector = agent_detector()
    service = DetectorService(detector, max_fps=25.0)
    cams = []
    for n in range(3):
        cfg = CameraConfig(id=f"cam{n}", source=str(CLIP), realtime=False)
        client = service.client(cfg.id, cfg.detect_fps)
        p, sink = make_pipeline(client, gated=True, camera=cfg.id)
        capture = CaptureThread.for_camera(cfg)
        worker = CameraWorker(cfg.id, capture.slot, p, live=False)
        cams.append((capture, worker, p, sink, client))
    flood = service.client("flood", detect_fps=5)
    dead = service.client("dead", detect_fps=5)
    stop = threading.Event()
    image = next(iter(clip_frames()))

    def flooding():
        while not stop.is_set():
            flood.submit(image)
            stop.wait(0.001)

    service.start()
    dead.submit(image)  # never collected
    flooder = threading.Thread(target=flooding, daemon=True)
    flooder.start()
    try:
        for capture, worker, *_ in cams:
            worker.start()
            capture.start()
        for _, worker, *_ in cams:
            assert worker.finished.wait(600)
    finally:
        stop.set()
        flooder.join(5)
        for capture, worker, *_ in cams:
            capture.stop()
            worker.stop()
            capture.join(5)
        service.stop()
    for _, _, p, sink, client in cams:
        assert_six_person_visits(sink)
        assert client.stats().detected == p.counters.snapshot(0.0).frames_detected > 0
    starts = np.array(service.run_starts)
    assert np.diff(starts).min() >= 1 / 25 - 1e-3  # never above the budget
    by_cam = {c.camera_id: c for c in service.stats().cameras}
    for n in range(3):  # every frame a camera asked about was served: nobody starved
        st = by_cam[f"cam{n}"]
        assert st.detected == st.submitted
        assert st.dropped_busy == 0
    assert by_cam["flood"].dropped_busy > by_cam["flood"].detected > 0  # it only hurt itself
    assert by_cam["dead"].submitted == 1


@pytest.mark.parametrize(
    ("wanted", "available", "chosen", "missing"),
    [
        (["CPUExecutionProvider"], ["CPUExecutionProvider"], ["CPUExecutionProvider"], []),
        (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
         ["CUDAExecutionProvider", "CPUExecutionProvider"],
         ["CUDAExecutionProvider", "CPUExecutionProvider"], ["TensorrtExecutionProvider"]),
        (["CUDAExecutionProvider"], ["CPUExecutionProvider"], ["CPUExecutionProvider"],
         ["CUDAExecutionProvider"]),
    ],
)  # fmt: skip
def test_providers_fall_back_to_the_cpu(wanted, available, chosen, missing):
    assert choose_providers(wanted, available) == (chosen, missing)


def test_a_missing_provider_is_one_log_line_and_the_cpu_runs(caplog):
    cfg = DetectorConfig(
        model=MODEL, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"],
        graph_optimization="basic",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        detector = load_detector(cfg)
    lines = [r.getMessage() for r in caplog.records if "execution provider" in r.getMessage()]
    assert len(lines) == 1
    assert "TensorrtExecutionProvider, CUDAExecutionProvider" in lines[0]
    assert detector.providers == ["CPUExecutionProvider"]
    image = cv2.imread(str(MEDIA / "zidane.jpg"))
    assert "person" in {detector.detect(image).label(i) for i in range(2)}


def test_regions_find_people_the_whole_frame_misses():
    r = compare_regions(MODEL, MEDIA / "ozlu_pedestrian_survaillance.mp4", max_frames=120)
    assert r["regions_compared"] >= 20
    assert r["people_found_by_region"] > r["people_found_by_whole_frame"]


@pytest.mark.parametrize(
    ("starts", "expected"),
    [
        ([], 0),
        ([0.0], 1),
        ([0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 7 / 6], 6),
        ([0.0, 0.1, 0.2, 1.5], 3),
    ],
)
def test_max_runs_in_any_second(starts, expected):
    assert max_runs_per_s(starts) == expected
