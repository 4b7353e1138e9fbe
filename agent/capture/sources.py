"""Frame sources: video files, RTSP/HTTP streams and USB cameras through OpenCV, GStreamer
pipelines through a ``gst-launch-1.0`` subprocess (pip's OpenCV has no GStreamer), and streams
or files through an ``ffmpeg`` subprocess (``decoder: ffmpeg``). The subprocess sources share
:class:`PipeSource`: raw BGR frames read from a pipe, the process killed on a timeout.

A source is used by one thread at a time (its
:class:`~agent.capture.thread.CaptureThread`). It can be closed and opened again; ``ts``
never goes backwards over the life of one source object.
Every error is a :class:`SourceError` whose message names the source with credentials redacted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Literal, NoReturn, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import cv2
import numpy as np
import numpy.typing as npt

from agent.config import CameraConfig, read_secret
from agent.domain import Frame
from agent.errors import SourceError, SourceFinished
from agent.node.redact import redact, source_secrets

SourceKind = Literal["file", "rtsp", "usb", "gstreamer", "url"]
Image = npt.NDArray[np.uint8]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://\S*$")
_FDSINK_LAST = re.compile(r"!\s*fdsink\b[^!]*$")
_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
RTSP_DEFAULTS = {"rtsp_transport": "tcp", "analyzeduration": "1000000"}
ENDED = "pipeline ended"
PROBE_1S = ("-analyzeduration", "1000000")  # FFmpeg's default 5 s probe delays each (re)open


class Clock(Protocol):
    """Time as the sources see it; tests pass a fake."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FrameSource(Protocol):
    """A camera, file or pipeline delivering :class:`Frame` objects, one reader at a time."""

    @property
    def name(self) -> str:
        """A description for logs, credentials redacted."""
        ...

    @property
    def is_live(self) -> bool:
        """True for cameras/streams (``ts`` is capture time), false for files (media time)."""
        ...

    def open(self) -> None:
        """Open (or reopen) the source; raise :class:`SourceError` if it cannot be opened."""

    def read(self) -> Frame:
        """The next frame; :class:`SourceFinished` at the end of a non-looping file,
        :class:`SourceError` on any failure or timeout."""
        ...

    def close(self) -> None:
        """Release the source; idempotent, never raises."""


def source_kind(source: str) -> SourceKind:
    """Classify a configured ``source`` string (pure: touches neither disk nor network)."""
    text = source.strip()
    url = _SCHEME.match(text)
    if url:  # before '!': a password may contain '!', a pipeline never starts with a scheme
        return "rtsp" if url.group(1).lower() in ("rtsp", "rtsps") else "url"
    if "!" in text:
        return "gstreamer"
    if text.isdigit() or text.startswith("/dev/"):
        return "usb"
    return "file"


def describe(cfg: CameraConfig) -> str:
    """The camera as named in logs and errors: its id and its redacted source."""
    return f"{cfg.id} ({redact(cfg.source.strip(), source_secrets(cfg.source))})"


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` in its user info (``scheme://user:password@host/...``)."""
    if password is None:
        return url
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def make_source(cfg: CameraConfig, clock: Clock | None = None) -> FrameSource:
    """The source for a camera config: :class:`GstPipeSource` for pipelines and ``decoder:
    gstreamer``, :class:`FfmpegSource` for ``decoder: ffmpeg``, else :class:`OpenCVSource`."""
    clock = clock or SystemClock()
    kind = source_kind(cfg.source)
    if kind == "gstreamer" or cfg.decoder == "gstreamer":
        return GstPipeSource(cfg, clock)
    if cfg.decoder == "ffmpeg":
        return FfmpegSource(cfg, clock)
    return OpenCVSource(cfg, clock, kind)


def is_lossless(cfg: CameraConfig) -> bool:
    """Whether every frame must reach the consumer: files played with ``realtime: false``."""
    return source_kind(cfg.source) == "file" and not cfg.realtime


def as_bgr(image: npt.NDArray[Any], name: str) -> Image:
    """``image`` as a contiguous HxWx3 uint8 BGR array (grey and BGRA are converted)."""
    if image.dtype != np.uint8:
        raise SourceError(f"{name}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image, dtype=np.uint8)
    raise SourceError(f"{name}: unsupported frame shape {image.shape}")


class MediaTimeline:
    """Turns per-play media times into one strictly increasing ``ts`` across loops/reopens."""

    def __init__(self, frame_s: float) -> None:
        self.frame_s = frame_s
        self.last_ts: float | None = None
        self.play_frames = 0
        self._offset = 0.0
        self._prev_media: float | None = None

    def start_play(self) -> None:
        """The file starts again from its beginning."""
        self.play_frames = 0
        self._prev_media = None

    def stamp(self, media_s: float | None) -> float:
        """The ``ts`` of the next frame, given its media time (None or garbage: index/fps)."""
        prev = self._prev_media
        if media_s is None or not math.isfinite(media_s) or media_s < 0:
            media_s = self.play_frames * self.frame_s if prev is None else prev + self.frame_s
        elif prev is not None and media_s <= prev:
            media_s = prev + self.frame_s
        if self.play_frames == 0:
            last = self.last_ts
            self._offset = 0.0 if last is None else last + self.frame_s - media_s
        self._prev_media = media_s
        self.play_frames += 1
        self.last_ts = self._offset + media_s
        return self.last_ts


class Pacer:
    """Sleeps so that frames come out at their media time (``realtime: true`` files).

    A gap longer than ``max_sleep_s`` is shortened to it, and a reader more than
    ``max_sleep_s`` late is re-anchored rather than bursting to catch up.
    """

    def __init__(self, clock: Clock, max_sleep_s: float = 1.0) -> None:
        self._clock = clock
        self._max_sleep_s = max_sleep_s
        self._anchor: float | None = None  # monotonic time of ts == 0

    def reset(self) -> None:
        self._anchor = None

    def wait(self, ts: float) -> None:
        now = self._clock.monotonic()
        if self._anchor is None:
            self._anchor = now - ts
            return
        delay = self._anchor + ts - now
        if delay > self._max_sleep_s:
            self._anchor -= delay - self._max_sleep_s
            delay = self._max_sleep_s
        elif delay < -self._max_sleep_s:
            self._anchor = now - ts
        if delay > 0:
            self._clock.sleep(delay)


def ffmpeg_options(current: str, defaults: dict[str, str]) -> str:
    """``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (``key;value|key;value``) with ``defaults`` added for
    keys the operator did not set."""
    pairs = [p for p in current.split("|") if p]
    have = {p.split(";", 1)[0].strip() for p in pairs}
    pairs += [f"{k};{v}" for k, v in defaults.items() if k not in have]
    return "|".join(pairs)


def ensure_rtsp_options() -> None:
    """Ask OpenCV's FFmpeg backend for RTSP over TCP and a 1 s stream probe (the default
    probe took 2.8 s per (re)connect and then delivered those frames as a burst).
    Operator-set options win. Set before each open: FFmpeg reads it there."""
    current = os.environ.get(_FFMPEG_OPTIONS, "")
    wanted = ffmpeg_options(current, RTSP_DEFAULTS)
    if wanted != current:
        os.environ[_FFMPEG_OPTIONS] = wanted


class OpenCVSource:
    """A file, RTSP/HTTP stream (FFmpeg backend) or USB camera (V4L2 backend).

    Files: ``ts`` is media time (``CAP_PROP_POS_MSEC``, else index/fps), strictly increasing,
    continued across loops; ``realtime`` paces reads to it, and ``wall_ts`` is the epoch time
    when playback started plus ``ts``, so durations are clip durations at any playback speed.
    Live sources: ``ts`` is the monotonic capture time and ``wall_ts`` the epoch time at
    capture.
    """

    def __init__(self, cfg: CameraConfig, clock: Clock, kind: SourceKind | None = None) -> None:
        self._cfg = cfg
        self._clock = clock
        self._kind: SourceKind = kind or source_kind(cfg.source)
        if self._kind == "gstreamer":
            raise ValueError("GStreamer pipelines need GstPipeSource")
        self._name = describe(cfg)
        self._secrets = source_secrets(cfg.source)
        self._cap: cv2.VideoCapture | None = None
        self._timeline = MediaTimeline(frame_s=0.04)
        self._pacer = Pacer(clock)
        self._count = 0
        self._wall0: float | None = None  # files: the epoch time of media time 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_live(self) -> bool:
        return self._kind != "file"

    def open(self) -> None:
        self.close()
        if self._kind == "file" and not Path(self._cfg.source).is_file():
            raise SourceError(f"{self._name}: file not found")
        self._cap = self._capture()
        self._timeline.start_play()
        self._pacer.reset()

    def read(self) -> Frame:
        cap = self._cap
        if cap is None:
            raise SourceError(f"{self._name}: read before open")
        ok, image = self._grab(cap)
        if not ok:
            if self.is_live:
                raise SourceError(f"{self._name}: no frame (stream ended, failed or timed out)")
            cap, image = self._rewind()
        if self.is_live:
            ts, wall_ts = self._clock.monotonic(), self._clock.time()
        else:
            ts = self._media_ts(cap)
            if self._wall0 is None:
                self._wall0 = self._clock.time() - ts
            wall_ts = self._wall0 + ts
        frame = Frame(self._cfg.id, self._count, ts, wall_ts, as_bgr(image, self._name))
        self._count += 1
        return frame

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            with contextlib.suppress(cv2.error):  # nothing useful to do about it
                cap.release()

    def _media_ts(self, cap: cv2.VideoCapture) -> float:
        pos_ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
        ts = self._timeline.stamp(pos_ms / 1000.0)
        if self._cfg.realtime:
            self._pacer.wait(ts)
        return ts

    def _rewind(self) -> tuple[cv2.VideoCapture, npt.NDArray[Any]]:
        """End of file: raise SourceFinished, or start again and return the first frame."""
        if not self._cfg.loop:
            raise SourceFinished(f"{self._name}: end of file")
        if self._timeline.play_frames == 0:
            raise SourceError(f"{self._name}: no frame could be decoded")
        self.close()
        cap = self._cap = self._capture()
        self._timeline.start_play()
        ok, image = self._grab(cap)
        if not ok:
            raise SourceError(f"{self._name}: no frame after rewinding")
        return cap, image

    def _grab(self, cap: cv2.VideoCapture) -> tuple[bool, npt.NDArray[Any]]:
        try:
            ok, image = cap.read()
        except cv2.error as exc:
            raise SourceError(f"{self._name}: read failed: {self._clean(str(exc))}") from exc
        return bool(ok) and image is not None, image

    def _capture(self) -> cv2.VideoCapture:
        try:
            cap = self._new_capture()
        except cv2.error as exc:
            raise SourceError(f"{self._name}: cannot open: {self._clean(str(exc))}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self._name}: cannot open")
        if not self.is_live:
            fps = float(cap.get(cv2.CAP_PROP_FPS))
            self._timeline.frame_s = 1.0 / fps if math.isfinite(fps) and 0 < fps < 1000 else 0.04
        return cap

    def _clean(self, text: str) -> str:
        """``text`` with the camera's password (from its URL or its file) masked."""
        return redact(text, self._secrets)

    def _new_capture(self) -> cv2.VideoCapture:
        cfg = self._cfg
        password = read_secret(None, cfg.password_file)
        self._secrets = [*source_secrets(cfg.source), *([password] if password else [])]
        url = with_password(cfg.source, password)
        if self._kind == "usb":
            target: int | str = int(cfg.source) if cfg.source.strip().isdigit() else cfg.source
            cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, cfg.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height),
                (cv2.CAP_PROP_BUFFERSIZE, 1),
            ):
                if value is not None and cap.isOpened():
                    cap.set(prop, value)
            return cap
        if self._kind == "rtsp":
            ensure_rtsp_options()
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(1, round(cfg.open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, round(cfg.read_timeout_s * 1000)),
        ]
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


def gst_tail(width: int, height: int) -> str:
    """What turns decoded video into raw BGR frames of ``width`` x ``height`` on stdout."""
    caps = f"video/x-raw,format=BGR,width={width},height={height}"
    return f"videoconvert ! videoscale ! {caps} ! fdsink fd=1"


def gst_pipeline(source: str, width: int, height: int) -> str:
    """The pipeline to run: as given if it ends in ``fdsink``, else with a BGR tail appended."""
    if _FDSINK_LAST.search(source):
        return source.strip()
    return f"{source.strip()} ! {gst_tail(width, height)}"


def gst_quote(value: str) -> str:
    """``value`` as a double-quoted GStreamer property value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def gst_rtsp_pipeline(url: str, decoder: str, width: int, height: int) -> list[str]:
    """gst-launch-1.0 arguments decoding an H.264 RTSP camera with ``decoder``: ``decodebin``
    (GStreamer picks), ``v4l2h264dec`` (Pi), ``nvv4l2decoder ! nvvidconv`` (Jetson),
    ``avdec_h264`` (software). Credentials go in rtspsrc's ``user-id``/``user-pw``."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    location = urlunsplit(parts._replace(netloc=host))
    src = ["rtspsrc", f"location={gst_quote(location)}", "protocols=tcp", "latency=200"]
    if userinfo:
        user, _, password = userinfo.partition(":")
        src += [f"user-id={gst_quote(unquote(user))}", f"user-pw={gst_quote(unquote(password))}"]
    if decoder.strip() == "decodebin":
        decode = ["decodebin"]
    else:
        decode = ["rtph264depay", "!", "h264parse", "!", *shlex.split(decoder)]
    return [*src, "!", *decode, "!", *shlex.split(gst_tail(width, height))]


class PipeSource:
    """A decoder subprocess writing raw BGR frames of a known size to its stdout.

    Subclasses say what to run (:meth:`_command`). The first frame may take
    ``open_timeout_s``, later ones ``read_timeout_s``; on a timeout (a hung or SIGSTOPped
    decoder), an early exit or close, the process is killed, and the capture thread starts a
    new one. Its stderr is kept in a temporary file; the tail of it, passwords masked, goes
    into the error.
    """

    tool = "decoder"

    def __init__(self, cfg: CameraConfig, clock: Clock) -> None:
        self._cfg = cfg
        self._clock = clock
        self._name = describe(cfg)
        self._secrets = source_secrets(cfg.source)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._size = (0, 0)
        self._first = True
        self._count = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_live(self) -> bool:
        return True

    @property
    def pid(self) -> int | None:
        """The running decoder's process id, for tests and diagnostics."""
        return self._proc.pid if self._proc is not None else None

    def _command(self) -> tuple[list[str], int, int]:
        """The argv to run and the frame width and height it writes."""
        raise NotImplementedError

    def _stamp(self) -> float:
        """The new frame's ``ts``: capture time (files override it with media time)."""
        return self._clock.monotonic()

    def _which(self, tool: str, package: str) -> str:
        exe = shutil.which(tool)
        if exe is None:
            raise SourceError(f"{self._name}: {tool} not found (Debian: {package})")
        return exe

    def open(self) -> None:
        self.close()
        argv, width, height = self._command()
        self._size = (width, height)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,
            )
        except OSError as exc:
            self.close()
            raise SourceError(f"{self._name}: cannot start {self.tool}: {exc}") from exc
        self._first = True

    def read(self) -> Frame:
        proc, (width, height) = self._proc, self._size
        if proc is None or proc.stdout is None:
            raise SourceError(f"{self._name}: read before open")
        timeout = self._cfg.open_timeout_s if self._first else self._cfg.read_timeout_s
        image = np.empty((height, width, 3), np.uint8)
        problem = read_exact(proc.stdout.fileno(), image.data.cast("B"), timeout)
        if problem is not None:
            self._failed(problem)
        self._first = False
        frame = Frame(self._cfg.id, self._count, self._stamp(), self._clock.time(), image)
        self._count += 1
        return frame

    def _failed(self, problem: str) -> NoReturn:
        detail = self._stderr_tail()
        self.close()
        raise SourceError(f"{self._name}: {problem}{': ' + detail if detail else ''}")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        stderr, self._stderr = self._stderr, None
        if stderr is not None:
            stderr.close()

    def _stderr_tail(self, limit: int = 400) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - limit))
        text = self._stderr.read().decode("utf-8", "replace")
        return redact(" ".join(text.split()), self._secrets)

    def _url(self) -> str:
        """The source URL with the password from ``password_file`` (read at each open)."""
        password = read_secret(None, self._cfg.password_file)
        self._secrets = [*source_secrets(self._cfg.source), *([password] if password else [])]
        return with_password(self._cfg.source.strip(), password)


class GstPipeSource(PipeSource):
    """A GStreamer pipeline run by ``gst-launch-1.0``, raw BGR frames read from its stdout:
    a pipeline source (containing ``!``), or an RTSP URL with ``decoder: gstreamer`` decoded
    by ``gst_decoder``. ``width`` and ``height`` are required.

    The pipeline's end is a failure (a camera pipeline that ends has lost its camera), never
    :class:`SourceFinished`.
    """

    tool = "gst-launch-1.0"

    def __init__(self, cfg: CameraConfig, clock: Clock, launcher: str = "gst-launch-1.0") -> None:
        super().__init__(cfg, clock)
        self.tool = launcher

    def _command(self) -> tuple[list[str], int, int]:
        width, height = self._cfg.width, self._cfg.height
        if width is None or height is None:
            raise SourceError(f"{self._name}: GStreamer sources need width and height")
        exe = self._which(self.tool, "gstreamer1.0-tools")
        try:  # gst-launch joins its arguments and parses the pipeline description again
            if source_kind(self._cfg.source) == "rtsp":
                tokens = gst_rtsp_pipeline(self._url(), self._cfg.gst_decoder, width, height)
            else:
                tokens = shlex.split(gst_pipeline(self._cfg.source, width, height))
        except ValueError as exc:
            raise SourceError(f"{self._name}: cannot parse the pipeline: {exc}") from exc
        return [exe, "-q", *tokens], width, height


def ffmpeg_argv(
    exe: str,
    url: str,
    kind: SourceKind,
    size: tuple[int, int],
    *,
    hwaccel: str | None = None,
    codec: str | None = None,
    realtime: bool = True,
    loop: bool = False,
) -> list[str]:
    """``ffmpeg`` decoding ``url`` to raw BGR frames of ``size`` on its stdout."""
    argv = [exe, "-nostdin", "-hide_banner", "-loglevel", "error"]
    if kind == "rtsp":
        argv += ["-rtsp_transport", "tcp", *PROBE_1S]
    if hwaccel:
        argv += ["-hwaccel", hwaccel]
    if codec:
        argv += ["-c:v", codec]
    if kind == "file":
        argv += ["-re"] if realtime else []
        argv += ["-stream_loop", "-1"] if loop else []
    width, height = size
    return [
        *argv, "-i", url, "-an", "-sn", "-dn", "-vf", f"scale={width}:{height}",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1",
    ]  # fmt: skip


def parse_probe(text: str) -> tuple[int, int, float | None]:
    """Width, height and frame rate from ``ffprobe -of json`` output."""
    streams = json.loads(text).get("streams") or []
    if not streams:
        raise ValueError("no video stream")
    stream = streams[0]
    num, _, den = str(stream.get("avg_frame_rate") or stream.get("r_frame_rate", "0/0")).partition(
        "/"
    )
    try:
        fps: float | None = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        fps = None
    if fps is not None and not (math.isfinite(fps) and 0 < fps < 1000):
        fps = None
    return int(stream["width"]), int(stream["height"]), fps


class FfmpegSource(PipeSource):
    """An RTSP/HTTP stream or a file decoded by an ``ffmpeg`` subprocess (``decoder: ffmpeg``).

    The frame size is ``width`` x ``height`` if both are set (ffmpeg scales), else probed with
    ``ffprobe`` at each open. ``hwaccel`` is passed as ``-hwaccel``, ``ffmpeg_codec`` as
    ``-c:v``. Files: ``ts`` is media
    time (index / probed fps), ``realtime`` paces with ``-re``, ``loop`` uses
    ``-stream_loop -1``, and the end is :class:`SourceFinished`.

    The camera URL (with its password) is an argument of ffmpeg and ffprobe, so users of the
    box who can read ``/proc/PID/cmdline`` can see it; see the README for the trade-off.
    """

    tool = "ffmpeg"

    def __init__(self, cfg: CameraConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self._kind = source_kind(cfg.source)
        self._timeline = MediaTimeline(frame_s=0.04)

    @property
    def is_live(self) -> bool:
        return self._kind != "file"

    def _command(self) -> tuple[list[str], int, int]:
        cfg = self._cfg
        if self._kind == "file" and not Path(cfg.source).is_file():
            raise SourceError(f"{self._name}: file not found")
        exe = self._which("ffmpeg", "ffmpeg")
        url = self._url() if self._kind != "file" else cfg.source
        width, height = cfg.width, cfg.height
        if width is None or height is None or self._kind == "file":
            probed_w, probed_h, fps = self._probe(url)
            width, height = width or probed_w, height or probed_h
            self._timeline.frame_s = 1.0 / fps if fps else 0.04
        self._timeline.start_play()
        argv = ffmpeg_argv(exe, url, self._kind, (width, height), hwaccel=cfg.hwaccel,
                           codec=cfg.ffmpeg_codec,
                           realtime=cfg.realtime, loop=cfg.loop)  # fmt: skip
        return argv, width, height

    def _probe(self, url: str) -> tuple[int, int, float | None]:
        argv = [self._which("ffprobe", "ffmpeg"), "-v", "error"]
        argv += ["-rtsp_transport", "tcp", *PROBE_1S] if self._kind == "rtsp" else []
        argv += ["-select_streams", "v:0", "-show_entries",
                 "stream=width,height,avg_frame_rate,r_frame_rate", "-of", "json", url]  # fmt: skip
        try:
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                argv, capture_output=True, timeout=self._cfg.open_timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise SourceError(f"{self._name}: ffprobe found no stream in "
                              f"{self._cfg.open_timeout_s:g} s") from exc  # fmt: skip
        except OSError as exc:
            raise SourceError(f"{self._name}: cannot run ffprobe: {exc}") from exc
        try:
            return parse_probe(proc.stdout.decode("utf-8", "replace"))
        except (ValueError, KeyError, TypeError) as exc:
            err = redact(" ".join(proc.stderr.decode("utf-8", "replace").split())[-400:],
                         self._secrets)  # fmt: skip
            raise SourceError(f"{self._name}: cannot probe the stream: {err or exc}") from exc

    def _stamp(self) -> float:
        return self._clock.monotonic() if self.is_live else self._timeline.stamp(None)

    def _failed(self, problem: str) -> NoReturn:
        proc = self._proc
        if not self.is_live and problem == ENDED and proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2.0)
            if proc.returncode == 0 and self._timeline.play_frames > 0:
                self.close()
                raise SourceFinished(f"{self._name}: end of file")
        super()._failed(problem)


def read_exact(fd: int, buffer: memoryview, timeout_s: float) -> str | None:
    """Fill ``buffer`` from ``fd`` within ``timeout_s``; None on success, else what went wrong."""
    deadline = time.monotonic() + timeout_s
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    got = 0
    while got < len(buffer):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(max(1, math.ceil(remaining * 1000))):
            return f"no frame for {timeout_s:g} s"
        n = os.readv(fd, [buffer[got:]])
        if n == 0:
            return ENDED if got == 0 else f"{ENDED} inside a frame"
        got += n
    return None


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 1.0) -> None:
    """Terminate ``proc`` (SIGKILL after ``grace_s``), reap it and close its stdout."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
