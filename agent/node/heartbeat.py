"""Heartbeats: a psutil system probe plus pipeline counters, published every ``interval_s``.

Heartbeats are never queued in the outbox: only the latest matters. The first goes out as
soon as the link is connected; one that later finds the link down is skipped and counted, and
the count rides on the next one that goes out (before the first connection nothing is
counted: a node that is still connecting has no outage to report).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from agent.contract import HEARTBEAT_SCHEMA, encode_dataclass
from agent.node.liveness import NULL_BEAT, Beat

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SystemStats:
    cpu_percent: float
    mem_used_bytes: int
    mem_total_bytes: int
    agent_rss_bytes: int
    disk_free_bytes: int | None
    soc_temp_c: float | None


@dataclass(frozen=True, slots=True)
class CameraHeartbeat:
    id: str
    state: str
    reconnects: int
    fps_in: float
    fps_detected: float
    frames_dropped: int
    frames_skipped: int
    inference_ms_p50: float | None
    inference_ms_p95: float | None
    events: int
    visits: int
    emit_failures: int
    errors: int
    last_error: str | None
    skipped_no_motion: int = 0
    dropped_busy: int = 0


@dataclass(frozen=True, slots=True)
class OutboxHeartbeat:
    depth: int
    events: int
    snapshots: int
    bytes: int
    file_bytes: int
    oldest_age_s: float | None
    dropped_events: int
    dropped_snapshots: int
    gaps_pending: int
    dead_letters: int
    dead_letters_kept: int
    open_visits: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class LinkHeartbeat:
    connected: bool
    connects: int
    disconnects: int
    heartbeats_skipped: int
    refused_publishes: int
    retrying: int
    resends: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node_id: str
    run_id: str
    ts: float
    clock_synced: bool | None
    uptime_s: float
    version: str
    system: SystemStats
    cameras: tuple[CameraHeartbeat, ...]
    outbox: OutboxHeartbeat
    link: LinkHeartbeat

    def __post_init__(self) -> None:
        if self.uptime_s < 0:
            raise ValueError("Heartbeat.uptime_s must be >= 0")


class SystemProbe(Protocol):
    def sample(self) -> SystemStats: ...


def _soc_temp() -> float | None:
    try:
        temps = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        temps = {}
    for name in ("cpu_thermal", "soc_thermal", "cpu-thermal", "coretemp", "k10temp"):
        if temps.get(name):
            return round(float(temps[name][0].current), 1)
    zone = Path("/sys/class/thermal/thermal_zone0/temp")
    try:
        return round(int(zone.read_text().strip()) / 1000, 1)
    except (OSError, ValueError):
        return None


class PsutilProbe:
    """The real system probe: CPU since the last sample, memory, data-dir disk, SoC temperature."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._proc = psutil.Process()
        psutil.cpu_percent(None)  # prime: the next call measures since now

    def sample(self) -> SystemStats:
        mem = psutil.virtual_memory()
        try:
            disk_free: int | None = psutil.disk_usage(str(self.data_dir)).free
        except OSError:
            disk_free = None
        return SystemStats(
            cpu_percent=float(psutil.cpu_percent(None)),
            mem_used_bytes=int(mem.total - mem.available),
            mem_total_bytes=int(mem.total),
            agent_rss_bytes=int(self._proc.memory_info().rss),
            disk_free_bytes=disk_free,
            soc_temp_c=_soc_temp(),
        )


class HeartbeatPublisher(Protocol):
    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int | None: ...


class HeartbeatThread:
    """Publishes ``collect()`` every ``interval_s`` until stopped; skips while disconnected."""

    def __init__(
        self,
        collect: Callable[[int], Heartbeat],
        link: HeartbeatPublisher,
        topic: str,
        *,
        interval_s: float,
        qos: int,
    ) -> None:
        self._collect = collect
        self._link = link
        self._topic = topic
        self._interval_s = interval_s
        self._qos = qos
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self.progress: Beat = NULL_BEAT  # ticked every beat (agent.node.liveness)
        self.sent = 0
        self.skipped = 0
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def beat(self) -> bool:
        """Publish one heartbeat now; False when the link was down (counted as skipped once
        a heartbeat has gone out)."""
        payload = encode_dataclass(HEARTBEAT_SCHEMA, self._collect(self.skipped))
        if self._link.publish(self._topic, payload, self._qos) is None:
            self.skipped += self.sent > 0
            return False
        self.sent += 1
        return True

    def _run(self) -> None:
        while not self._link.connected:  # the first heartbeat goes out once connected
            self.progress.tick(0.1)
            if self._stop.wait(0.1):
                return
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self._interval_s
            self.progress.tick(self._interval_s)
            try:
                self.beat()
            except Exception:  # thread top: log, count, keep beating
                self.errors += 1
                log.exception("heartbeat failed")
