"""Frame sources, the frame slot and the capture thread, on real footage and on fakes."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.capture.sources import (
    RTSP_DEFAULTS,
    GstPipeSource,
    MediaTimeline,
    OpenCVSource,
    Pacer,
    ffmpeg_options,
    gst_pipeline,
    is_lossless,
    make_source,
    source_kind,
    with_password,
)
from agent.capture.thread import Backoff, CaptureThread, FrameSlot, SourceStatus
from agent.config import CameraConfig
from agent.domain import Frame
from agent.errors import SourceError, SourceFinished
from tests.conftest import MEDIA
from tests.fakes import FakeClock, FakeSource
from tests.polling import wait_until

CLIP = MEDIA / "one-by-one-person-detection.mp4"  # 1394 frames, 10 fps, 768x432
CLIP_FRAMES = 1394
FAST = Backoff(initial_s=0.01, max_s=0.05, jitter_s=0.01, healthy_after_s=10.0)


def drain_source(src: OpenCVSource) -> list[Frame]:
    """Every frame until SourceFinished."""
    frames = []
    while True:
        try:
            frames.append(src.read())
        except SourceFinished:
            return frames


def drain_slot(slot: FrameSlot, pause_every: int = 0) -> list[int]:
    """Frame indices from the slot until it raises SourceFinished; fails on a 5 s gap."""
    indices: list[int] = []
    while True:
        try:
            f = slot.get(5)
        except SourceFinished:
            return indices
        assert f is not None, "no frame for 5 s"
        indices.append(f.index)
        if pause_every and len(indices) % pause_every == 0:
            time.sleep(0.05)


def frame(index: int) -> Frame:
    return Frame("cam", index, float(index), 0.0, np.zeros((4, 4, 3), np.uint8))


@pytest.fixture
def threads() -> Iterator[list[CaptureThread]]:
    started: list[CaptureThread] = []
    yield started
    for t in started:
        t.stop()
    for t in started:
        assert t.join(10), "capture thread did not stop"


def start(threads: list[CaptureThread], thread: CaptureThread) -> CaptureThread:
    threads.append(thread)
    thread.start()
    return thread


# --- source_kind, make_source -----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("rtsp://10.0.0.5:554/stream1", "rtsp"),
        ("rtsp://admin:p@ss!word@10.0.0.5/h264", "rtsp"),
        ("RTSPS://cam.local/live", "rtsp"),
        ("http://cam.local/video.mjpg", "url"),
        ("https://example.org/hls/index.m3u8", "url"),
        ("/dev/video0", "usb"),
        ("/dev/video12", "usb"),
        ("/dev/v4l/by-id/usb-Logitech_C920-video-index0", "usb"),
        ("0", "usb"),
        ("3", "usb"),
        ("videotestsrc ! videoconvert", "gstreamer"),
        ("rtspsrc location=rtsp://u:p@h/cam latency=0 ! rtph264depay ! avdec_h264", "gstreamer"),
        ("v4l2src device=/dev/video0!videoconvert", "gstreamer"),
        ("/srv/clips/street.mp4", "file"),
        ("clips/street.mp4", "file"),
        ("street.mp4", "file"),
        ("C:/clips/a.mp4", "file"),
    ],
)
def test_source_kind(source: str, kind: str) -> None:
    assert source_kind(source) == kind


def test_make_source_dispatch() -> None:
    gst = CameraConfig(id="g", source="videotestsrc ! videoconvert", width=64, height=48)
    rtsp = CameraConfig(id="r", source="rtsp://u:pw@127.0.0.1:9/cam")
    assert isinstance(make_source(gst), GstPipeSource)
    src = make_source(rtsp)
    assert isinstance(src, OpenCVSource)
    assert src.is_live
    assert src.name == "r (rtsp://u:***@127.0.0.1:9/cam)"
    assert not make_source(CameraConfig(id="f", source=str(CLIP))).is_live
    assert is_lossless(CameraConfig(id="f", source=str(CLIP), realtime=False))
    assert not is_lossless(CameraConfig(id="f", source=str(CLIP), realtime=True))
    assert not is_lossless(CameraConfig(id="r", source="rtsp://h/cam", realtime=False))


# --- timeline and pacing (pure, fake clock) ---------------------------------------------


def test_timeline_uses_media_time_and_never_goes_back() -> None:
    tl = MediaTimeline(frame_s=0.1)
    tl.start_play()
    assert [tl.stamp(m) for m in (0.0, 0.1, 0.2)] == pytest.approx([0.0, 0.1, 0.2])
    assert tl.stamp(0.2) == pytest.approx(0.3)  # a repeated position: index/fps
    assert tl.stamp(float("nan")) == pytest.approx(0.4)
    tl.start_play()  # loop: the next play continues one frame after the last
    assert tl.stamp(0.0) == pytest.approx(0.5)
    assert tl.stamp(0.1) == pytest.approx(0.6)


def test_pacer_sleeps_to_media_time() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    for i in range(5):
        pacer.wait(i * 0.1)
    assert clock.now == pytest.approx(1000.4)
    assert clock.sleeps == pytest.approx([0.1] * 4)
    clock.advance(5.0)  # the reader was paused: re-anchor instead of bursting
    pacer.wait(0.5)
    pacer.wait(0.6)
    assert clock.sleeps[-1] == pytest.approx(0.1)
    pacer.wait(30.0)  # a long gap in the media is shortened to max_sleep_s
    assert clock.sleeps[-1] == pytest.approx(1.0)


# --- OpenCVSource on a real file ------------------------------------------------------


def test_file_source_reads_every_frame_with_media_ts() -> None:
    cfg = CameraConfig(id="f", source=str(CLIP), realtime=False)
    src = OpenCVSource(cfg, FakeClock())
    src.open()
    frames = [(f.index, f.ts, f.image.shape) for f in drain_source(src)]
    src.close()
    assert len(frames) == CLIP_FRAMES
    assert frames[0][2] == (432, 768, 3)
    ts = np.array([t for _, t, _ in frames])
    assert np.all(np.diff(ts) > 0)
    idx = np.array([i for i, _, _ in frames])
    assert np.array_equal(idx, np.arange(CLIP_FRAMES))
    assert np.allclose(ts, idx / 10.0, atol=0.02)


def test_replayed_file_times_are_start_time_plus_media_time() -> None:
    """Played as fast as possible, a clip still reports clip durations in wall time."""
    clock = FakeClock(wall=1.8e9)
    src = OpenCVSource(CameraConfig(id="f", source=str(CLIP), realtime=False), clock)
    src.open()
    frames = [src.read() for _ in range(50)]
    clock.advance(3600)  # slow decoding (or a stall) does not stretch the clip's times
    frames += [src.read() for _ in range(50)]
    src.close()
    walls = np.array([f.wall_ts for f in frames])
    media = np.array([f.ts for f in frames])
    assert walls[0] == pytest.approx(1.8e9, abs=0.1)
    assert np.allclose(walls - walls[0], media - media[0])
    assert walls[-1] - walls[0] == pytest.approx(9.9, abs=0.02)


def test_file_loop_keeps_ts_increasing() -> None:
    clock = FakeClock()
    src = OpenCVSource(CameraConfig(id="f", source=str(CLIP), loop=True, realtime=False), clock)
    src.open()
    ts = [src.read().ts for _ in range(CLIP_FRAMES + 30)]
    src.close()
    assert np.all(np.diff(ts) > 0)
    assert ts[CLIP_FRAMES - 1] == pytest.approx(139.3, abs=0.02)
    assert ts[CLIP_FRAMES] == pytest.approx(139.4, abs=0.02)  # one frame after the last
    assert ts[-1] == pytest.approx((CLIP_FRAMES + 29) / 10.0, abs=0.05)
    src.open()  # a reopen (after a failure) must not send ts back either
    assert src.read().ts > ts[-1]
    src.close()


def test_file_realtime_paces_reads_on_the_clock() -> None:
    clock = FakeClock()
    src = OpenCVSource(CameraConfig(id="f", source=str(CLIP), realtime=True), clock)
    src.open()
    start, frames = clock.now, [src.read() for _ in range(20)]
    src.close()
    assert clock.now - start == pytest.approx(1.9, abs=0.01)  # paced to media time
    assert frames[-1].wall_ts == pytest.approx(clock.time())


def test_missing_file_raises_source_error_without_touching_cv2() -> None:
    src = OpenCVSource(CameraConfig(id="f", source="/nonexistent/clip.mp4"), FakeClock())
    with pytest.raises(SourceError, match="file not found"):
        src.open()
    with pytest.raises(SourceError, match="before open"):
        src.read()
    src.close()


def test_unopenable_stream_is_a_source_error_with_redacted_name() -> None:
    cfg = CameraConfig(id="r", source="rtsp://u:hunter2@127.0.0.1:9/cam", open_timeout_s=2)
    src = OpenCVSource(cfg, FakeClock())
    with pytest.raises(SourceError) as err:
        src.open()
    assert "hunter2" not in str(err.value)
    assert "u:***@127.0.0.1:9" in str(err.value)
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "").count("rtsp_transport;tcp") == 1


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        ("", "rtsp_transport;tcp|analyzeduration;1000000"),
        ("rtsp_transport;udp", "rtsp_transport;udp|analyzeduration;1000000"),
        ("stimeout;5000000", "stimeout;5000000|rtsp_transport;tcp|analyzeduration;1000000"),
        ("analyzeduration;0|rtsp_transport;tcp", "analyzeduration;0|rtsp_transport;tcp"),
    ],
)
def test_ffmpeg_options_keep_what_the_operator_set(current: str, expected: str) -> None:
    assert ffmpeg_options(current, RTSP_DEFAULTS) == expected


# --- FrameSlot ------------------------------------------------------------------------


def test_lossy_slot_keeps_only_the_newest() -> None:
    slot = FrameSlot(lossless=False)
    for i in range(5):
        assert slot.put(frame(i))
    assert slot.dropped == 4
    got = slot.get(0)
    assert got is not None
    assert got.index == 4
    assert slot.get(0) is None
    assert slot.get(0.01) is None


def test_lossless_slot_blocks_the_producer_until_taken() -> None:
    slot = FrameSlot(lossless=True)
    assert slot.put(frame(0))
    second = threading.Thread(target=slot.put, args=(frame(1),))
    second.start()
    second.join(0.1)
    assert second.is_alive()  # waiting for the consumer
    first = slot.get(1)
    assert first is not None
    assert first.index == 0
    second.join(1)
    nxt = slot.get(1)
    assert nxt is not None
    assert nxt.index == 1
    assert slot.dropped == 0


def test_slot_close_wakes_a_blocked_producer() -> None:
    slot = FrameSlot(lossless=True)
    slot.put(frame(0))
    result: list[bool] = []
    producer = threading.Thread(target=lambda: result.append(slot.put(frame(1))))
    producer.start()
    slot.close()
    producer.join(1)
    assert result == [False]


def test_slot_signals_the_end_after_the_last_frame() -> None:
    slot = FrameSlot(lossless=True)
    slot.put(frame(0))
    slot.finish()
    last = slot.get(0)
    assert last is not None
    assert last.index == 0
    with pytest.raises(SourceFinished):
        slot.get(1)
    with pytest.raises(SourceFinished):  # sticky
        slot.get(0)


# --- CaptureThread on a real file -----------------------------------------------------


def test_non_realtime_file_is_lossless_and_ends(threads: list[CaptureThread]) -> None:
    cfg = CameraConfig(id="f", source=str(CLIP), realtime=False)
    cap = start(threads, CaptureThread.for_camera(cfg, backoff=FAST))
    indices = drain_slot(cap.slot, pause_every=200)  # a slow consumer loses nothing
    assert indices == list(range(CLIP_FRAMES))
    assert cap.join(5)
    st = cap.status()
    assert st.state == "finished"
    assert (st.frames_in, st.frames_dropped, st.reconnects) == (CLIP_FRAMES, 0, 0)


def test_realtime_file_drops_for_a_slow_consumer(threads: list[CaptureThread]) -> None:
    cfg = CameraConfig(id="f", source=str(CLIP), realtime=True)
    cap = start(threads, CaptureThread.for_camera(cfg, backoff=FAST))
    assert cap.slot.get(5) is not None
    got = []
    for _ in range(4):
        time.sleep(0.45)  # ~4 frames arrive meanwhile
        f = cap.slot.get(1)
        assert f is not None
        got.append(f.index)
    st = cap.status()
    assert st.state == "online"
    assert st.frames_dropped > 0
    assert min(b - a for a, b in itertools.pairwise(got)) >= 3  # only the newest was kept
    held = st.frames_in - (len(got) + 1) - st.frames_dropped
    assert 0 <= held <= 2  # at most one frame in the slot (+1 being counted in)
    assert 5 < st.fps_in < 20


def test_missing_file_reconnects_with_backoff(
    threads: list[CaptureThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.capture.thread")
    cfg = CameraConfig(id="gone", source="/nonexistent/clip.mp4")
    cap = start(threads, CaptureThread.for_camera(cfg, backoff=FAST))
    assert wait_until(lambda: cap.status().reconnects >= 3)
    st = cap.status()
    assert st.state == "reconnecting"
    assert st.last_error is not None
    assert "file not found" in st.last_error
    assert st.frames_in == 0
    assert cap.slot.get(0.01) is None
    failures = [r for r in caplog.records if "file not found" in r.getMessage()]
    assert len(failures) >= 3
    assert all(r.getMessage().startswith("gone (/nonexistent/clip.mp4)") for r in failures)


# --- CaptureThread on fakes -------------------------------------------------------------


def test_fake_failing_opens_then_online(threads: list[CaptureThread]) -> None:
    src = FakeSource(fail_opens=3)
    cap = start(threads, CaptureThread(src, backoff=Backoff(0.05, 0.2, 0.01)))
    seen: list[SourceStatus] = []

    def online() -> bool:
        seen.append(cap.status())
        return seen[-1].state == "online"

    assert wait_until(online)
    states = [s.state for s in seen]
    assert states[0] in ("starting", "reconnecting")
    assert "reconnecting" in states
    assert states.index("reconnecting") < states.index("online")
    st = cap.status()
    assert st.reconnects == 3
    assert src.opens == 4
    assert st.last_error == f"{src.name}: cannot open (#3)"
    assert wait_until(lambda: cap.slot.get(1) is not None)


def test_backoff_grows_and_is_capped() -> None:
    import tenacity  # noqa: PLC0415 - only this test builds retry states by hand

    strategy = Backoff(initial_s=1.0, max_s=30.0, jitter_s=1.0).strategy()
    retrying = tenacity.Retrying()
    for attempt, low in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (50, 30.0)]:
        state = tenacity.RetryCallState(retrying, None, (), {})
        state.attempt_number = attempt
        waits = [strategy(state) for _ in range(50)]
        assert all(low <= w <= low + 1.0 for w in waits)
        assert max(waits) > min(waits)  # jittered


def test_hanging_read_is_reported_stale_then_reopened(threads: list[CaptureThread]) -> None:
    src = FakeSource(hang_at=20, hang_s=5.0)
    cap = start(threads, CaptureThread(src, read_timeout_s=0.3, open_timeout_s=0.3, backoff=FAST))
    assert wait_until(lambda: cap.status().state == "online")
    assert wait_until(lambda: cap.status().state == "reconnecting", timeout=3)
    st = cap.status()
    assert src.total == 20  # still hanging in read(): the watchdog reported it
    assert st.last_error is not None
    assert "no frame for 0.3 s" in st.last_error
    assert st.since >= 0
    src.release.set()  # the late frame is refused, the source is reopened
    assert wait_until(lambda: cap.status().state == "online" and cap.status().reconnects == 1)
    assert src.opens == 2


def test_dropped_after_healthy_run_reopens_at_once(threads: list[CaptureThread]) -> None:
    src = FakeSource(fail_read_at=10)
    backoff = Backoff(initial_s=30.0, max_s=30.0, jitter_s=0.0, healthy_after_s=0.0)
    cap = start(threads, CaptureThread(src, backoff=backoff))
    assert wait_until(lambda: cap.status().reconnects >= 2, timeout=3)  # no 30 s waits
    assert cap.status().last_error == f"{src.name}: connection reset"


def test_stop_is_prompt_during_backoff(threads: list[CaptureThread]) -> None:
    src = FakeSource(fail_opens=1000)
    cap = CaptureThread(src, backoff=Backoff(initial_s=30.0, max_s=30.0))
    cap.start()
    assert wait_until(lambda: cap.status().state == "reconnecting")
    started = time.monotonic()
    cap.stop()
    assert cap.join(2)
    assert time.monotonic() - started < 1.0
    assert cap.status().state == "stopped"
    assert src.opens == 1


def test_stop_releases_a_producer_blocked_on_a_lossless_slot() -> None:
    cap = CaptureThread(FakeSource(), lossless=True, backoff=FAST)
    cap.start()
    assert wait_until(lambda: cap.status().frames_in >= 2)  # one in the slot, one waiting
    cap.stop()
    assert cap.join(2)
    assert cap.status().state == "stopped"


def test_unexpected_error_is_caught_logged_and_counted(
    threads: list[CaptureThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="agent.capture.thread")
    src = FakeSource(crash_at=5)
    cap = start(threads, CaptureThread(src, backoff=FAST))
    assert wait_until(lambda: cap.status().internal_errors == 1 and cap.status().frames_in > 10)
    assert cap.status().state == "online"
    assert src.closes >= 1  # the crashed session closed its source
    assert any("RuntimeError" in r.getMessage() for r in caplog.records)


def test_finite_fake_finishes(threads: list[CaptureThread]) -> None:
    cap = start(threads, CaptureThread(FakeSource(frames=3), lossless=True, backoff=FAST))
    assert drain_slot(cap.slot) == [0, 1, 2]
    assert cap.join(2)
    assert cap.status().state == "finished"


# --- GstPipeSource ----------------------------------------------------------------------

needs_gst = pytest.mark.skipif(
    shutil.which("gst-launch-1.0") is None,
    reason="gst-launch-1.0 not installed (Debian package gstreamer1.0-tools)",
)


def gst_cfg(pipeline: str, **kw: object) -> CameraConfig:
    return CameraConfig.model_validate({"id": "g", "source": pipeline, **kw})


def test_gst_pipeline_tail() -> None:
    assert gst_pipeline("videotestsrc", 64, 48) == (
        "videotestsrc ! videoconvert ! videoscale ! "
        "video/x-raw,format=BGR,width=64,height=48 ! fdsink fd=1"
    )
    own = "videotestsrc ! video/x-raw,format=BGR,width=8,height=8 ! fdsink fd=1 sync=false"
    assert gst_pipeline(own, 8, 8) == own


def test_gst_needs_width_and_height() -> None:
    src = GstPipeSource(gst_cfg("videotestsrc ! videoconvert"), FakeClock())
    with pytest.raises(SourceError, match="width and height"):
        src.open()


@needs_gst
def test_gst_reads_exact_frames_then_ends() -> None:
    cfg = gst_cfg("videotestsrc num-buffers=20 pattern=ball", width=64, height=48)
    src = GstPipeSource(cfg, FakeClock())
    src.open()
    frames = [src.read() for _ in range(20)]
    with pytest.raises(SourceError, match="pipeline ended"):
        src.read()
    src.close()
    assert [f.index for f in frames] == list(range(20))
    assert all(f.image.shape == (48, 64, 3) for f in frames)
    assert len({f.image.tobytes() for f in frames}) > 1  # the ball moves


@needs_gst
def test_gst_broken_pipeline_reports_gstreamer_error() -> None:
    src = GstPipeSource(gst_cfg("nosuchelement ! videoconvert", width=8, height=8), FakeClock())
    src.open()
    with pytest.raises(SourceError, match="nosuchelement"):
        src.read()
    src.close()


@needs_gst
def test_gst_read_timeout_kills_the_process() -> None:
    slow = "videotestsrc is-live=true ! video/x-raw,framerate=1/10"
    src = GstPipeSource(gst_cfg(slow, width=32, height=24, read_timeout_s=0.5), FakeClock())
    src.open()
    pid = src.pid
    assert pid is not None
    src.read()  # the first frame comes at once
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"no frame for 0\.5 s"):
        src.read()
    assert 0.4 < time.monotonic() - started < 2.0
    assert src.pid is None
    assert not Path(f"/proc/{pid}").exists()


@needs_gst
def test_gst_capture_thread_restarts_an_ended_pipeline(threads: list[CaptureThread]) -> None:
    cfg = gst_cfg("videotestsrc num-buffers=5 ! videoconvert", width=32, height=24)
    cap = start(threads, CaptureThread.for_camera(cfg, backoff=FAST))
    got: list[int] = []
    while len(got) < 12:
        f = cap.slot.get(5)
        assert f is not None
        got.append(f.index)
    assert got == sorted(got)
    assert cap.status().reconnects >= 2


@pytest.mark.parametrize(
    ("url", "password", "expected"),
    [
        (
            "rtsp://admin@10.0.0.5:554/ch1",
            "p@ss:w/rd",
            "rtsp://admin:p%40ss%3Aw%2Frd@10.0.0.5:554/ch1",
        ),
        ("rtsp://admin:placeholder@cam/ch1?x=1", "s3cret", "rtsp://admin:s3cret@cam/ch1?x=1"),
        ("rtsp://admin@cam/ch1", None, "rtsp://admin@cam/ch1"),
    ],
)
def test_password_file_goes_into_the_url(url, password, expected):
    assert with_password(url, password) == expected


def test_camera_password_file_config(tmp_path):
    secret = tmp_path / "cam.pw"
    secret.write_text("s3cret\n")
    cfg = CameraConfig(id="gate", source="rtsp://admin@cam/ch1", password_file=secret)
    assert cfg.password_file == secret
    with pytest.raises(ValidationError, match="password_file needs a URL"):
        CameraConfig(id="gate", source="/dev/video0", password_file=secret)
