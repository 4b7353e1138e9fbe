"""Hand-written fakes for the capture layer: a scriptable frame source and a manual clock."""

from __future__ import annotations

import threading
import time

import numpy as np

from agent.delivery.mqtt_link import PubAck
from agent.domain import Frame
from agent.errors import DetectorError, SourceError, SourceFinished
from agent.node.heartbeat import SystemStats


class FakeClock:
    """A clock that only moves when told to (``sleep`` advances it at once)."""

    def __init__(self, start: float = 1000.0, wall: float = 1.7e9) -> None:
        self.now = start
        self.wall_offset = wall - start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSource:
    """A live (or finite) source scripted by its arguments.

    ``fail_opens``: the first N opens raise SourceError. ``fail_read_at``: the read of that
    per-session frame number raises SourceError (once per session). ``hang_at``: that read
    blocks until :attr:`release` is set or ``hang_s`` passes. ``frames``: after that many
    frames in total, reads raise SourceFinished. ``crash_at``: that total read raises
    RuntimeError once (a bug, not a source failure).
    """

    def __init__(
        self,
        *,
        name: str = "fake (rtsp://user:***@cam/)",
        fail_opens: int = 0,
        fail_read_at: int | None = None,
        hang_at: int | None = None,
        hang_s: float = 5.0,
        frames: int | None = None,
        crash_at: int | None = None,
        interval_s: float = 0.005,
        open_error: str = "cannot open",
    ) -> None:
        self.name = name
        self.is_live = True
        self.fail_opens = fail_opens
        self.fail_read_at = fail_read_at
        self.hang_at = hang_at
        self.hang_s = hang_s
        self.frames = frames
        self.crash_at = crash_at
        self.interval_s = interval_s
        self.open_error = open_error
        self.release = threading.Event()
        self.opens = 0
        self.closes = 0
        self.is_open = False
        self.total = 0
        self._session_reads = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise SourceError(f"{self.name}: {self.open_error} (#{self.opens})")
        self.is_open = True
        self._session_reads = 0

    def read(self) -> Frame:
        if not self.is_open:
            raise SourceError(f"{self.name}: read before open")
        n, self._session_reads = self._session_reads, self._session_reads + 1
        if self.frames is not None and self.total >= self.frames:
            raise SourceFinished(f"{self.name}: end")
        if self.crash_at is not None and self.total == self.crash_at:
            self.crash_at = None
            raise RuntimeError("bug in a fake")
        if n == self.fail_read_at:
            raise SourceError(f"{self.name}: connection reset")
        if n == self.hang_at:
            self.release.wait(self.hang_s)
        time.sleep(self.interval_s)
        image = np.full((48, 64, 3), self.total % 256, np.uint8)
        frame = Frame("fake", self.total, time.monotonic(), time.time(), image)
        self.total += 1
        return frame

    def close(self) -> None:
        self.closes += 1
        self.is_open = False


class FakeDetector:
    """A detector seam fake: returns scripted detections per call, or raises DetectorError."""

    family = "fake"
    input_size = (320, 320)

    def __init__(self, script, fail_on: set[int] | None = None) -> None:
        self._script = script  # callable(call_index) -> Detections
        self._fail_on = fail_on or set()
        self.calls = 0

    def detect(self, image):
        i = self.calls
        self.calls += 1
        if i in self._fail_on:
            raise DetectorError(f"scripted failure on call {i}")
        return self._script(i)

    def close(self) -> None:
        pass


class ListSink:
    """An event sink fake that keeps every emission."""

    def __init__(self) -> None:
        self.emissions = []

    def emit(self, emission) -> None:
        self.emissions.append(emission)

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.event.label, e.event.type.value) for e in self.emissions]


class FakeLink:
    """An MQTT link seam fake: records publishes; the test connects, acks, refuses, drops."""

    def __init__(self, *, connected: bool = True, inflight: int = 4) -> None:
        self.connected = connected
        self._inflight = inflight
        self.sent: list[tuple[int, str, bytes, int, dict[str, str] | None]] = []
        self._acks: list[PubAck] = []
        self._lost = False
        self._next_mid = 1
        self.wakers: list[threading.Event] = []

    # -- the Link protocol
    def add_waker(self, event: threading.Event) -> None:
        self.wakers.append(event)

    def inflight_limit(self) -> int:
        return self._inflight

    def publish(self, topic, payload, qos, retain=False, properties=None):
        if not self.connected:
            return None
        mid, self._next_mid = self._next_mid, self._next_mid + 1
        self.sent.append((mid, topic, payload, qos, properties))
        return mid

    def acks(self) -> list[PubAck]:
        out, self._acks = self._acks, []
        return out

    def take_disconnected(self) -> bool:
        was, self._lost = self._lost, False
        return was

    # -- what the test does
    def ack(
        self, mid: int, ok: bool = True, reason: str = "Success", code: int | None = None
    ) -> None:
        """A PUBACK; a refusal's ``code`` defaults to 0x80 (unspecified error)."""
        self._acks.append(
            PubAck(mid, ok, reason, code if code is not None else (0 if ok else 0x80))
        )

    def drop(self) -> None:
        self.connected = False
        self._lost = True

    def unacked(self) -> list[int]:
        return [mid for mid, *_ in self.sent]


class FakeProbe:
    """A system probe seam fake with fixed readings."""

    def __init__(self, temp: float | None = 48.5) -> None:
        self.samples = 0
        self.temp = temp

    def sample(self) -> SystemStats:
        self.samples += 1
        return SystemStats(
            cpu_percent=12.5, mem_used_bytes=800 << 20, mem_total_bytes=4 << 30,
            agent_rss_bytes=150 << 20, disk_free_bytes=10 << 30, soc_temp_c=self.temp,
        )  # fmt: skip


class FakeNotifier:
    """The :class:`agent.node.systemd.Notifier` seam: records every message in order."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.messages: list[str] = []

    def notify(self, message: str) -> bool:
        if not self.enabled:
            return False
        self.messages.append(message)
        return True

    def assignments(self) -> list[str]:
        """Every ``KEY=VALUE`` line sent so far, in order."""
        return [line for message in self.messages for line in message.split("\n")]

    def take(self) -> list[str]:
        """The assignments sent since the last call."""
        lines = self.assignments()
        self.messages.clear()
        return lines
