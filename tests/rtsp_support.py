"""The ``make_server`` fixture: real RTSP servers (tests/rtsp_server.py) started on demand,
each killed by pid afterwards; the test is skipped, with the reason, when the system Python
cannot load GstRtspServer. ``captures``: capture threads stopped and joined after the test.
Registered for every test module in tests/conftest.py."""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.capture.thread import CaptureThread
from tests.conftest import MEDIA
from tests.rtsp_server import SYSTEM_PYTHON, RtspServer

CLIP = MEDIA / "one-by-one-person-detection.mp4"


@functools.cache
def rtsp_unavailable() -> str | None:
    """Why the RTSP server cannot run here, or None."""
    check = "import gi; gi.require_version('GstRtspServer', '1.0')"
    try:
        subprocess.run([SYSTEM_PYTHON, "-c", check], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        packages = "python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp"
        return f"{SYSTEM_PYTHON} cannot load GstRtspServer (Debian: {packages}): {exc}"
    return None


@pytest.fixture
def make_server() -> Iterator[Callable[..., RtspServer]]:
    """``make_server(**kw)`` starts an RTSP server replaying CLIP at /cam."""
    reason = rtsp_unavailable()
    if reason:
        pytest.skip(reason)
    servers: list[RtspServer] = []

    def make(**kw: Any) -> RtspServer:
        server = RtspServer(CLIP, **kw)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.kill()  # SIGCONT then SIGKILL, by pid


@pytest.fixture
def captures() -> Iterator[list[CaptureThread]]:
    """Capture threads the test appends here are stopped and joined afterwards."""
    started: list[CaptureThread] = []
    yield started
    for cap in started:
        cap.stop()
    for cap in started:
        assert cap.join(15), "capture thread did not stop"


def wait_for(pred: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``pred`` held, None if it did not within ``timeout``."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.02)
    return time.monotonic() - start
