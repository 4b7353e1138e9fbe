"""The capture thread against a real RTSP server (gst-rtsp-server run by the system Python).

Needs Debian ``python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp
gstreamer1.0-plugins-{base,good,bad}``; skipped with the reason when they are missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from agent.capture.thread import Backoff, CaptureThread
from agent.config import CameraConfig
from tests.conftest import MEDIA
from tests.rtsp_server import RtspServer
from tests.rtsp_support import wait_for

pytestmark = pytest.mark.rtsp

CLIP = MEDIA / "one-by-one-person-detection.mp4"
BACKOFF = Backoff(initial_s=0.5, max_s=2.0, jitter_s=0.2, healthy_after_s=10.0)
PASSWORD = "s3cr3t-Pw"


def capture(captures: list[CaptureThread], url: str, **cfg: float) -> CaptureThread:
    camera = CameraConfig.model_validate({"id": "cam1", "source": url, **cfg})
    cap = CaptureThread.for_camera(camera, backoff=BACKOFF)
    captures.append(cap)
    cap.start()
    return cap


def frames_flow(cap: CaptureThread, count: int = 5, timeout: float = 10.0) -> bool:
    got, deadline = 0, time.monotonic() + timeout
    while got < count and time.monotonic() < deadline:
        got += cap.slot.get(0.5) is not None
    return got >= count


def test_reads_live_frames(
    make_server: Callable[..., RtspServer], captures: list[CaptureThread]
) -> None:
    server = make_server()
    cap = capture(captures, server.url, open_timeout_s=5, read_timeout_s=5)
    assert wait_for(lambda: cap.status().state == "online", 15) is not None
    frames = [cap.slot.get(2) for _ in range(10)]
    assert all(f is not None for f in frames)
    ts = [f.ts for f in frames if f is not None]
    assert ts == sorted(ts)
    assert frames[0] is not None
    assert frames[0].image.shape == (432, 768, 3)
    time.sleep(2.0)  # FFmpeg buffered the frames sent while it probed: let that burst pass
    before = cap.status().frames_in
    time.sleep(2.0)
    st = cap.status()
    assert st.state == "online"
    assert st.fps_in > 0
    assert 12 <= st.frames_in - before <= 28  # served live at 10 fps, not as fast as decoded
    assert st.reconnects == 0


def test_reconnects_after_server_restart(
    make_server: Callable[..., RtspServer], captures: list[CaptureThread]
) -> None:
    server = make_server()
    cap = capture(captures, server.url, open_timeout_s=5, read_timeout_s=5)
    assert frames_flow(cap)
    server.kill()
    restarted = time.monotonic()
    server.start()  # a camera reboot: same port, new process
    took = wait_for(lambda: cap.status().reconnects >= 1 and cap.status().state == "online", 20)
    assert took is not None, cap.status()
    assert frames_flow(cap)
    print(f"RTSP reconnect after server restart: {time.monotonic() - restarted:.1f} s")


def test_frozen_server_is_detected_by_read_timeout(
    make_server: Callable[..., RtspServer], captures: list[CaptureThread]
) -> None:
    server = make_server()
    cap = capture(captures, server.url, open_timeout_s=3, read_timeout_s=2)
    assert frames_flow(cap)
    server.freeze()  # SIGSTOP: TCP stays open, no data
    try:
        took = wait_for(lambda: cap.status().state == "reconnecting", 10)
        assert took is not None
        assert 1.5 < took < 4.0
        st = cap.status()
        assert st.last_error is not None
        assert "no frame" in st.last_error
        reopened = wait_for(lambda: cap.status().reconnects >= 1, 15)
        assert reopened is not None
        print(
            f"frozen RTSP server: reported after {took:.1f} s, reopen after {took + reopened:.1f} s"
        )
    finally:
        server.thaw()
    assert wait_for(lambda: cap.status().state == "online", 20) is not None


def test_password_never_logged(
    make_server: Callable[..., RtspServer],
    captures: list[CaptureThread],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    server = make_server(user="admin", password=PASSWORD)
    good = capture(captures, server.url, open_timeout_s=5, read_timeout_s=2)
    assert PASSWORD in server.url
    assert frames_flow(good)  # the credentials really were used
    wrong = capture(captures, server.url.replace(PASSWORD, PASSWORD + "-wrong"), open_timeout_s=3)
    server.kill()  # the good camera now fails too
    assert wait_for(lambda: good.status().reconnects >= 2, 15) is not None
    assert wait_for(lambda: wrong.status().reconnects >= 2, 15) is not None
    for cap in (good, wrong):
        st = cap.status()
        assert st.last_error is not None
        assert "admin:***@127.0.0.1" in st.last_error
        assert PASSWORD not in st.last_error
        assert PASSWORD not in cap.name
    assert caplog.records
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    out, err = capfd.readouterr()  # OpenCV/FFmpeg's own prints, too
    assert PASSWORD not in out
    assert PASSWORD not in err


def test_rtsp_server_helper_refuses_a_taken_port(make_server: Callable[..., RtspServer]) -> None:
    server = make_server()
    clash = RtspServer(CLIP, port=server.port)
    with pytest.raises(RuntimeError):
        clash.start(timeout_s=5)
