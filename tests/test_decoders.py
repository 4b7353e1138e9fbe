"""Decoder subprocesses: ``decoder: ffmpeg`` (an ``ffmpeg`` process, optionally ``-hwaccel``)
and ``decoder: gstreamer`` (``gst-launch-1.0`` with the Pi/Jetson recipe's shape, software
decoders here), against a real RTSP server and real files; a hung decoder is killed and
restarted by the capture thread."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from agent.capture.sources import (
    FfmpegSource,
    GstPipeSource,
    OpenCVSource,
    ffmpeg_argv,
    gst_rtsp_pipeline,
    make_source,
    parse_probe,
)
from agent.capture.thread import Backoff, CaptureThread
from agent.config import CameraConfig
from agent.errors import SourceError, SourceFinished
from tests.conftest import MEDIA
from tests.fakes import FakeClock
from tests.rtsp_server import RtspServer
from tests.rtsp_support import wait_for

BACKOFF = Backoff(initial_s=0.2, max_s=1.0, jitter_s=0.1, healthy_after_s=30.0)
PASSWORD = "p@ss!w0rd:x"
CAR = MEDIA / "degirum_Car.mp4"  # 4 frames, 900x600, 30 fps

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe not installed (Debian package ffmpeg; scripts/setup.sh --tests)",
)


def camera(source: str, **kw: object) -> CameraConfig:
    return CameraConfig.model_validate({"id": "cam", "source": source, **kw})


# --- pure: argv, probe output, pipelines, config -----------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "kw", "expected_head"),
    [
        ("rtsp://h/cam", "rtsp", {}, ["-rtsp_transport", "tcp", "-analyzeduration", "1000000"]),
        ("rtsp://h/cam", "rtsp", {"hwaccel": "drm"},
         ["-rtsp_transport", "tcp", "-analyzeduration", "1000000", "-hwaccel", "drm"]),
        ("/v.mp4", "file", {"realtime": True}, ["-re"]),
        ("/v.mp4", "file", {"realtime": False, "loop": True}, ["-stream_loop", "-1"]),
        ("http://h/v.mjpg", "url", {"hwaccel": "cuda"}, ["-hwaccel", "cuda"]),
        ("rtsp://h/cam", "rtsp", {"codec": "h264_v4l2m2m"},
         ["-rtsp_transport", "tcp", "-analyzeduration", "1000000", "-c:v", "h264_v4l2m2m"]),
    ],
)  # fmt: skip
def test_ffmpeg_argv(url, kind, kw, expected_head):
    argv = ffmpeg_argv("ffmpeg", url, kind, (640, 360), **kw)
    assert argv[:5] == ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    i = argv.index("-i")
    assert argv[5:i] == expected_head
    assert argv[i:] == ["-i", url, "-an", "-sn", "-dn", "-vf", "scale=640:360",
                        "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"streams": [{"width": 768, "height": 432, "avg_frame_rate": "10/1"}]}',
         (768, 432, 10.0)),
        ('{"streams": [{"width": 900, "height": 600, "avg_frame_rate": "0/0",'
         ' "r_frame_rate": "30/1"}]}', (900, 600, None)),
        ('{"streams": [{"width": 640, "height": 352, "r_frame_rate": "30000/1001"}]}',
         (640, 352, 30000 / 1001)),
    ],
)  # fmt: skip
def test_parse_probe(text, expected):
    assert parse_probe(text) == expected


def test_parse_probe_without_a_video_stream():
    with pytest.raises(ValueError, match="no video stream"):
        parse_probe('{"streams": []}')


TAIL = ["!", "videoconvert", "!", "videoscale", "!",
        "video/x-raw,format=BGR,width=640,height=360", "!", "fdsink", "fd=1"]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "decoder", "expected"),
    [
        ("rtsp://10.0.0.5:554/ch1", "v4l2h264dec",
         ['rtspsrc', 'location="rtsp://10.0.0.5:554/ch1"', "protocols=tcp", "latency=200", "!",
          "rtph264depay", "!", "h264parse", "!", "v4l2h264dec", *TAIL]),
        ("rtsp://admin:p%40ss%21@cam/s", "nvv4l2decoder ! nvvidconv",
         ['rtspsrc', 'location="rtsp://cam/s"', "protocols=tcp", "latency=200",
          'user-id="admin"', 'user-pw="p@ss!"', "!", "rtph264depay", "!", "h264parse", "!",
          "nvv4l2decoder", "!", "nvvidconv", *TAIL]),
        ("rtsp://u:a%22b@cam/s", "decodebin",
         ['rtspsrc', 'location="rtsp://cam/s"', "protocols=tcp", "latency=200",
          'user-id="u"', 'user-pw="a\\"b"', "!", "decodebin", *TAIL]),
    ],
)  # fmt: skip
def test_gst_rtsp_pipeline(url, decoder, expected):
    assert gst_rtsp_pipeline(url, decoder, 640, 360) == expected


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"source": "rtsp://h/c", "decoder": "gstreamer"}, "needs width and height"),
        ({"source": "/v.mp4", "decoder": "gstreamer", "width": 8, "height": 8}, "rtsp://"),
        ({"source": "rtsp://h/c", "decoder": "vlc"}, "decoder"),
        ({"source": "rtsp://h/c", "decoder": "ffmpeg", "hwaccel": "cuda; rm -rf"}, "hwaccel"),
    ],
)
def test_decoder_config_errors(kw, reason):
    with pytest.raises(ValidationError, match=reason):
        CameraConfig.model_validate({"id": "cam", **kw})


def test_make_source_follows_decoder():
    assert isinstance(make_source(camera("rtsp://h/c")), OpenCVSource)
    assert isinstance(make_source(camera("rtsp://h/c", decoder="ffmpeg")), FfmpegSource)
    assert isinstance(make_source(camera(str(CAR), decoder="ffmpeg")), FfmpegSource)
    gst = camera("rtsp://h/c", decoder="gstreamer", width=8, height=8)
    assert isinstance(make_source(gst), GstPipeSource)


# --- ffmpeg on a file ----------------------------------------------------------------------


@needs_ffmpeg
def test_ffmpeg_file_reads_every_frame_with_media_ts_then_finishes():
    src = FfmpegSource(camera(str(CAR), decoder="ffmpeg", realtime=False), FakeClock())
    assert not src.is_live
    src.open()
    frames = [src.read() for _ in range(4)]
    with pytest.raises(SourceFinished):
        src.read()
    src.close()
    assert [f.image.shape for f in frames] == [(600, 900, 3)] * 4
    assert [round(f.ts, 4) for f in frames] == [0.0, 0.0333, 0.0667, 0.1]
    assert len({f.image.tobytes() for f in frames}) == 4


@needs_ffmpeg
def test_ffmpeg_file_loops_and_scales():
    cfg = camera(str(CAR), decoder="ffmpeg", realtime=False, loop=True, width=450, height=300)
    src = FfmpegSource(cfg, FakeClock())
    src.open()
    frames = [src.read() for _ in range(10)]
    src.close()
    assert {f.image.shape for f in frames} == {(300, 450, 3)}
    ts = [f.ts for f in frames]
    assert ts == sorted(ts)
    assert len(set(ts)) == 10
    assert frames[4].image.tobytes() == frames[0].image.tobytes()  # it started again


@needs_ffmpeg
def test_ffmpeg_missing_file_and_broken_file_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="file not found"):
        FfmpegSource(camera(str(tmp_path / "no.mp4"), decoder="ffmpeg"), FakeClock()).open()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 5000)
    src = FfmpegSource(camera(str(bad), decoder="ffmpeg"), FakeClock())
    with pytest.raises(SourceError, match="cannot probe"):
        src.open()
    src.close()


# --- against the real RTSP server ----------------------------------------------------------


def start(captures: list[CaptureThread], cfg: CameraConfig) -> tuple[CaptureThread, object]:
    source = make_source(cfg)
    cap = CaptureThread(source, read_timeout_s=cfg.read_timeout_s,
                        open_timeout_s=cfg.open_timeout_s, backoff=BACKOFF)  # fmt: skip
    captures.append(cap)
    cap.start()
    return cap, source


def frames(cap: CaptureThread, count: int, timeout: float = 15.0) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        frame = cap.slot.get(0.5)
        if frame is not None:
            got.append(frame)
    return got


@pytest.fixture
def secured(make_server: Callable[..., RtspServer], tmp_path) -> tuple[RtspServer, str, object]:
    """An RTSP camera with a password; the config URL names only the user."""
    server = make_server(user="admin", password=PASSWORD)
    password_file = tmp_path / "camera.password"
    password_file.write_text(PASSWORD + "\n")
    return server, f"rtsp://admin@127.0.0.1:{server.port}/cam", password_file


@pytest.mark.rtsp
@needs_ffmpeg
@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        ({}, (432, 768, 3)),
        ({"width": 384, "height": 216, "hwaccel": "auto", "ffmpeg_codec": "h264"}, (216, 384, 3)),
    ],
)
def test_ffmpeg_reads_a_password_protected_camera(secured, captures, caplog, kw, shape):
    caplog.set_level(logging.DEBUG)
    _server, url, password_file = secured
    cfg = camera(url, decoder="ffmpeg", password_file=password_file, **kw)
    cap, _ = start(captures, cfg)
    got = frames(cap, 10)
    assert len(got) == 10
    assert {f.image.shape for f in got} == {shape}
    assert got[-1].image.std() > 10  # a picture, not a blank buffer
    assert cap.status().state == "online"
    assert PASSWORD not in caplog.text


@pytest.mark.rtsp
@needs_ffmpeg
def test_a_wrong_password_is_an_error_without_the_password(secured, captures, tmp_path):
    _server, url, _ = secured
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-it-" + PASSWORD)
    cap, _ = start(captures, camera(url, decoder="ffmpeg", password_file=wrong,
                                    open_timeout_s=5))  # fmt: skip
    assert wait_for(lambda: cap.status().last_error is not None, 20) is not None
    error = cap.status().last_error or ""
    assert "401 Unauthorized" in error
    assert PASSWORD not in error


@pytest.mark.rtsp
@needs_ffmpeg
def test_a_hung_ffmpeg_is_killed_and_restarted(make_server, captures):
    server = make_server()
    cfg = camera(server.url, decoder="ffmpeg", width=384, height=216, read_timeout_s=2)
    cap, source = start(captures, cfg)
    assert len(frames(cap, 5)) == 5
    hung = source.pid
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)  # a decoder that hangs: no exit, no output
    assert wait_for(lambda: cap.status().state == "reconnecting", 10) is not None
    assert wait_for(lambda: source.pid not in (None, hung), 15) is not None
    assert len(frames(cap, 5)) == 5
    st = cap.status()
    assert st.state == "online"
    assert st.reconnects >= 1
    assert "no frame for 2 s" in (st.last_error or "")
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)  # killed and reaped, not left stopped


@pytest.mark.rtsp
@pytest.mark.parametrize("decoder", ["avdec_h264", "decodebin"])
def test_gstreamer_decoder_recipe_on_a_password_protected_camera(secured, captures, decoder,
                                                                  caplog):  # fmt: skip
    """The Pi/Jetson recipe's code path (rtspsrc ! depay ! parse ! DECODER) with a software
    decoder: the hardware elements (v4l2h264dec, nvv4l2decoder) take the same place."""
    caplog.set_level(logging.DEBUG)
    _server, url, password_file = secured
    cfg = camera(url, decoder="gstreamer", gst_decoder=decoder, width=384, height=216,
                 password_file=password_file)  # fmt: skip
    cap, _ = start(captures, cfg)
    got = frames(cap, 10)
    assert len(got) == 10
    assert {f.image.shape for f in got} == {(216, 384, 3)}
    assert got[-1].image.std() > 10
    assert PASSWORD not in caplog.text


@pytest.mark.rtsp
def test_the_documented_pi_pipeline_with_a_software_decoder(make_server, captures):
    """README's Pi pipeline, ``v4l2h264dec`` swapped for ``avdec_h264``."""
    server = make_server()
    pipeline = (f"rtspsrc location={server.url} protocols=tcp latency=200 ! rtph264depay "
                "! h264parse ! avdec_h264 ! videoconvert ! videoscale "
                "! video/x-raw,format=BGR,width=640,height=360 ! fdsink fd=1")  # fmt: skip
    cap, _ = start(captures, camera(pipeline, width=640, height=360))
    got = frames(cap, 5)
    assert len(got) == 5
    assert got[0].image.shape == (360, 640, 3)
