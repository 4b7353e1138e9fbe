"""Wiring and lifecycles: ``App`` builds every component from its own config section, starts
the threads in dependency order and stops them in reverse.

Threads: one capture thread and one worker per camera, the publisher, the MQTT link's network
thread, the heartbeat. The main thread only waits: for SIGTERM/SIGINT, or for every camera to
be a finished file. Shutdown ends open events, drains the outbox for up to
``shutdown.drain_timeout_s``, publishes ``offline`` and disconnects.

Start-up ends, before any camera runs, every visit a crash or power cut left open (committed
``new`` without ``end`` in the outbox) with an ``end`` whose ``end_reason`` is ``restart``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from types import FrameType

from agent import __version__
from agent.capture.sources import is_lossless, source_kind
from agent.capture.thread import CaptureThread
from agent.config import CameraConfig, Settings
from agent.contract import Topics, encode_status
from agent.delivery.mqtt_link import MqttLink
from agent.delivery.outbox import Outbox, OutboxStats
from agent.delivery.publisher import Publisher
from agent.delivery.sink import OutboxSink
from agent.errors import OutboxError
from agent.node.clock import ClockSync, SystemClockSync
from agent.node.heartbeat import (
    CameraHeartbeat,
    Heartbeat,
    HeartbeatThread,
    LinkHeartbeat,
    OutboxHeartbeat,
    PsutilProbe,
)
from agent.node.service import Supervisor, status_line
from agent.vision.assembly import detector_config, make_pipeline
from agent.vision.detector import Detector, load_detector
from agent.vision.detector_service import CameraClient, DetectorService
from agent.vision.events import restart_end
from agent.vision.metrics import PipelineCounters
from agent.vision.pipeline import CameraWorker

log = logging.getLogger(__name__)


@dataclass
class Camera:
    """One camera's capture thread, pipeline worker and counters."""

    cfg: CameraConfig
    capture: CaptureThread
    worker: CameraWorker
    counters: PipelineCounters
    detector: CameraClient


def topics_for(settings: Settings) -> Topics:
    return Topics(settings.mqtt.topic_prefix, settings.commune_id, settings.node_id)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Who this run is, as the ``online`` status tells the commune server."""

    run_id: str
    started_ts: float
    restart_ends: int
    outbox_quarantined: bool


def make_link(settings: Settings, run: RunInfo) -> MqttLink:
    """The MQTT link with the node's last will and its ``online`` status."""
    topics = topics_for(settings)
    cams = [c.id for c in settings.cameras]

    def online() -> bytes:
        return encode_status(
            "online", topics, version=__version__, ts=round(time.time(), 3),
            started_ts=round(run.started_ts, 3), run_id=run.run_id, cameras=cams,
            restart_ends=run.restart_ends, outbox_quarantined=run.outbox_quarantined,
        )  # fmt: skip

    client_id = settings.mqtt.client_id or f"edge-{settings.node_id}"
    return MqttLink(settings.mqtt, topics.base, client_id, encode_status("offline", topics), online)


def end_left_open_visits(outbox: Outbox, sink: OutboxSink) -> int:
    """End every visit a crash left open (``end_reason`` restart); how many were ended.

    A visit whose ``end`` cannot be stored now (disk full) stays open for the next start.
    """
    ended = 0
    for visit in outbox.open_visits():
        try:
            sink.emit(restart_end(visit))
        except OutboxError as exc:
            log.error("cannot end visit %s left open by a restart: %s", visit.event_id, exc)  # noqa: TRY400
            break
        ended += 1
    if ended:
        log.info("ended %d visit(s) left open by the previous run (end_reason restart)", ended)
    return ended


class App:
    """The running agent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = topics_for(settings)
        self.stop_event = threading.Event()
        self.started_mono = time.monotonic()
        self.started_ts = time.time()
        self.clock: ClockSync = SystemClockSync()
        self.outbox = Outbox.open(settings.outbox)
        try:
            self.detector: Detector = load_detector(detector_config(settings))
        except Exception:
            self.outbox.close()
            raise
        self.detector_service = DetectorService(self.detector, max_fps=settings.detector.max_fps)
        self.sink = OutboxSink(self.outbox, self.topics, settings.snapshots, self.clock)
        self.run = RunInfo(
            run_id=uuid.uuid4().hex,
            started_ts=self.started_ts,
            restart_ends=end_left_open_visits(self.outbox, self.sink),
            outbox_quarantined=self.outbox.stats().quarantined_file is not None,
        )
        self.link = make_link(settings, self.run)
        self.publisher = Publisher(self.outbox, self.link, settings.mqtt, self.topics)
        self.cameras = [self._camera(cfg, self.sink) for cfg in settings.cameras]
        self.probe = PsutilProbe(settings.outbox.path.parent)
        hb = settings.heartbeat
        self.heartbeat = HeartbeatThread(
            self.collect_heartbeat, self.link, self.topics.heartbeat,
            interval_s=hb.interval_s, qos=hb.qos,
        )  # fmt: skip
        self.service = Supervisor.from_env(self.status_line)
        self._watch()

    def _watch(self) -> None:
        """Give every thread the agent owns a liveness beat (the systemd watchdog reads them)."""
        beat = self.service.liveness.beat
        self.link.progress = beat("mqtt-link")
        self.publisher.progress = beat("publisher")
        self.heartbeat.progress = beat("heartbeat")
        self.detector_service.progress = beat("detector")
        for cam in self.cameras:
            cam.capture.progress = beat(f"capture-{cam.cfg.id}")
            cam.worker.progress = beat(f"worker-{cam.cfg.id}")

    def status_line(self) -> str:
        """One line for ``systemctl status``: cameras online, outbox depth, MQTT link."""
        cams = [(cam.cfg.id, str(cam.capture.status().state)) for cam in self.cameras]
        return status_line(cams, self.outbox.stats().depth, self.link.connected)

    def _camera(self, cfg: CameraConfig, sink: OutboxSink) -> Camera:
        counters = PipelineCounters()
        client = self.detector_service.client(cfg.id, cfg.detect_fps)
        pipeline = make_pipeline(self.settings, cfg, client, sink, counters, wait=is_lossless(cfg))
        capture = CaptureThread.for_camera(cfg)
        live = source_kind(cfg.source) != "file"
        worker = CameraWorker(cfg.id, capture.slot, pipeline, live=live)
        return Camera(cfg, capture, worker, counters, client)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        log.info(
            "edge-agent %s: node %s, commune %s, %d camera(s), model %s (%s)",
            __version__, self.settings.node_id, self.settings.commune_id, len(self.cameras),
            self.settings.detector.model, self.detector.family,
        )  # fmt: skip
        self.link.start()
        self.publisher.start()
        self.detector_service.start()
        for cam in self.cameras:
            cam.worker.start()
            cam.capture.start()
        self.heartbeat.start()

    def all_finished(self) -> bool:
        return all(cam.worker.finished.is_set() for cam in self.cameras)

    def wait(self) -> None:
        """Block until asked to stop or until every camera is a finished file."""
        while not self.stop_event.wait(0.2):
            if self.all_finished():
                log.info("every camera has finished")
                return

    def shutdown(self) -> bool:
        """Stop in reverse order; True if the outbox drained before the timeout."""
        for cam in self.cameras:
            cam.capture.stop()
            cam.worker.stop()
        for cam in self.cameras:
            cam.worker.join(10.0)  # ends open events into the outbox
            cam.capture.join(5.0)
            if cam.worker.alive:  # its visits stay open in the outbox: next start ends them
                log.error("camera %s: worker did not stop in 10 s; leaving it", cam.cfg.id)
        self.detector_service.stop()
        timeout = self.settings.shutdown.drain_timeout_s
        drained = self.link.wait_connected(min(timeout, 2.0)) and self.publisher.drain(timeout)
        left = self.outbox.stats().depth
        if not drained:
            log.warning(
                "stopping with %d message(s) in the outbox: they go out on next start", left
            )
        self.heartbeat.stop()
        self.publisher.stop()
        offline = encode_status("offline", self.topics, ts=round(time.time(), 3))
        if not self.link.stop(graceful_offline=offline):
            log.warning("mqtt link still inside a connection attempt; not waiting for it")
        self.outbox.close()
        self.detector.close()
        return drained

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def run_until_done(self) -> int:
        """Run in the main thread until a signal or the end of every file; exit status 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        self.start()
        self.service.start()  # READY=1 once every thread has ticked
        try:
            self.wait()
        finally:
            self.service.stopping()
            self.shutdown()
        return 0

    # -- heartbeat --------------------------------------------------------------------------

    def collect_heartbeat(self, skipped: int) -> Heartbeat:
        now = time.monotonic()
        link = self.link.status()
        pub = self.publisher.stats()
        return Heartbeat(
            node_id=self.settings.node_id,
            run_id=self.run.run_id,
            ts=round(time.time(), 3),
            clock_synced=self.clock.synced(),
            uptime_s=round(now - self.started_mono, 1),
            version=__version__,
            system=self.probe.sample(),
            cameras=tuple(self._camera_heartbeat(cam, now) for cam in self.cameras),
            outbox=outbox_heartbeat(self.outbox.stats()),
            link=LinkHeartbeat(
                connected=link.connected,
                connects=link.connects,
                disconnects=link.disconnects,
                heartbeats_skipped=skipped,
                refused_publishes=pub.refused,
                retrying=pub.retrying,
                resends=pub.resends,
                last_error=link.last_error,
            ),
        )

    @staticmethod
    def _camera_heartbeat(cam: Camera, now: float) -> CameraHeartbeat:
        src = cam.capture.status()
        pipe = cam.counters.snapshot(now)
        det = cam.detector.stats()
        return CameraHeartbeat(
            id=cam.cfg.id, state=str(src.state), reconnects=src.reconnects,
            fps_in=round(src.fps_in, 2), fps_detected=pipe.fps_detected,
            frames_dropped=src.frames_dropped, frames_skipped=pipe.frames_skipped,
            inference_ms_p50=det.inference_ms_p50, inference_ms_p95=det.inference_ms_p95,
            events=pipe.events, visits=pipe.visits, emit_failures=pipe.emit_failures,
            errors=pipe.errors + src.internal_errors, last_error=src.last_error,
            skipped_no_motion=pipe.skipped_no_motion, dropped_busy=det.dropped_busy,
        )  # fmt: skip


def outbox_heartbeat(ob: OutboxStats) -> OutboxHeartbeat:
    return OutboxHeartbeat(
        depth=ob.depth, events=ob.events, snapshots=ob.snapshots, bytes=ob.payload_bytes,
        file_bytes=ob.file_bytes,
        oldest_age_s=round(ob.oldest_age_s, 1) if ob.depth else None,
        dropped_events=ob.dropped_events, dropped_snapshots=ob.dropped_snapshots,
        gaps_pending=ob.gaps_pending, dead_letters=ob.dead_letters,
        dead_letters_kept=ob.dead_letters_kept, open_visits=ob.open_visits,
        quarantined=ob.quarantined,
    )  # fmt: skip


def outbox_stats(settings: Settings) -> dict[str, object]:
    """``edge-agent outbox stats``: the outbox's counters as a dict."""
    outbox = Outbox.open(settings.outbox)
    try:
        return dataclasses.asdict(outbox.stats())
    finally:
        outbox.close()


def dead_letters(settings: Settings, action: str, ids: list[int] | None) -> list[dict[str, object]]:
    """``edge-agent outbox dead-letters list|requeue|purge``: one dict per line to print."""
    outbox = Outbox.open(settings.outbox)
    try:
        if action == "list":
            return [dataclasses.asdict(d) for d in outbox.dead_letters()]
        if action == "requeue":
            return [{"requeued": outbox.requeue_dead_letters(ids)}]
        if action == "purge":
            return [{"purged": outbox.purge_dead_letters(ids)}]
        raise ValueError(f"unknown dead-letters action {action!r}")
    finally:
        outbox.close()


def drain_outbox(settings: Settings, *, timeout: float) -> int:
    """``edge-agent outbox drain``: deliver what is queued; the number of messages left.

    Like ``run``, it first ends the visits a crash left open (``end_reason`` restart).
    """
    topics = topics_for(settings)
    outbox = Outbox.open(settings.outbox)
    try:
        sink = OutboxSink(outbox, topics, settings.snapshots, SystemClockSync())
        run = RunInfo(
            run_id=uuid.uuid4().hex,
            started_ts=time.time(),
            restart_ends=end_left_open_visits(outbox, sink),
            outbox_quarantined=outbox.stats().quarantined_file is not None,
        )
        link = make_link(settings, run)
        publisher = Publisher(outbox, link, settings.mqtt, topics)
        try:
            link.start()
            publisher.start()
            if not link.wait_connected(timeout):
                log.error("broker %s:%d unreachable", settings.mqtt.host, settings.mqtt.port)
            else:
                publisher.drain(timeout)
            return outbox.stats().depth
        finally:
            publisher.stop()
            link.stop(graceful_offline=encode_status("offline", topics))
    finally:
        outbox.close()
