"""The camera pipeline end to end on a real clip: source -> detector -> tracker -> events.

Frames come from the agent's own :class:`~agent.capture.sources.OpenCVSource` (``realtime: false``)
and are stepped in the same thread, so throughput is directly comparable with the serial
limit ``1 / (1/decode_fps + inference_s)``. The sink only counts (or, for the memory run,
also renders the snapshots as the agent would).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.capture.sources import OpenCVSource, SystemClock
from agent.config import CameraConfig, EventsConfig, SnapshotsConfig
from agent.errors import SourceFinished
from agent.vision.detector import load_detector
from agent.vision.events import Emission
from agent.vision.metrics import PipelineCounters
from agent.vision.pipeline import CameraPipeline
from agent.vision.snapshot import render
from bench.common import detector_config, make_builder, make_tracker, rate

CAMERA = "bench"
EVERY_FRAME_FPS = 1000.0  # far above any clip's frame rate: every frame is due


@dataclass
class CountingSink:
    """An :class:`~agent.vision.pipeline.EventSink` counting by type; optionally renders JPEGs."""

    render_snapshots: bool = False
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    types: Counter[str] = field(default_factory=Counter)
    snapshot_requests: int = 0
    jpeg_bytes: int = 0

    def emit(self, emission: Emission) -> None:
        self.types[emission.event.type.value] += 1
        if emission.snapshot is None:
            return
        self.snapshot_requests += 1
        if self.render_snapshots:
            cfg = self.snapshots
            jpeg = render(emission.snapshot, max_width=cfg.max_width, quality=cfg.quality)
            self.jpeg_bytes += len(jpeg)

    def counts(self) -> dict[str, int]:
        return {kind: self.types[kind] for kind in ("new", "update", "end")}


@dataclass
class _Run:
    frames: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def media_s(self) -> float:
        """Seconds of video played (frame spacing times frames)."""
        if self.frames < 2:
            return 0.0
        return (self.last_ts - self.first_ts) * self.frames / (self.frames - 1)


def build_pipeline(model: Path, detect_fps: float, sink: CountingSink) -> CameraPipeline:
    """One camera's pipeline with the agent's default detector and events settings."""
    events = EventsConfig()
    return CameraPipeline(
        load_detector(detector_config(model)),
        make_tracker(events),
        make_builder(CAMERA, events),
        sink,
        PipelineCounters(),
        detect_fps=detect_fps,
    )


@dataclass(frozen=True, slots=True)
class Probe:
    """Work run every ``every`` frames, outside the pipeline's timing (a baseline sampler)."""

    every: int
    fn: Callable[[], object]


def _probe(probe: Probe | None, frames: int) -> tuple[float, float]:
    """Run ``probe`` if due after ``frames`` frames; the wall and CPU seconds it took."""
    if probe is None or frames % probe.every:
        return 0.0, 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    probe.fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def play(
    pipeline: CameraPipeline, clip: Path, max_frames: int | None, probe: Probe | None = None
) -> _Run:
    """Step ``pipeline`` over ``clip`` as fast as it goes, then end open events; timed.

    ``probe`` runs between frames and its time is taken out of the run's wall and CPU time.
    """
    source = OpenCVSource(CameraConfig(id=CAMERA, source=str(clip), realtime=False), SystemClock())
    source.open()
    run = _Run()
    excluded_wall = excluded_cpu = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        while max_frames is None or run.frames < max_frames:
            frame = source.read()
            run.first_ts = frame.ts if run.frames == 0 else run.first_ts
            run.last_ts = frame.ts
            run.frames += 1
            pipeline.step(frame)
            w, c = _probe(probe, run.frames)
            excluded_wall, excluded_cpu = excluded_wall + w, excluded_cpu + c
    except SourceFinished:
        pass
    finally:
        source.close()
    pipeline.finish()
    run.wall_s = time.perf_counter() - wall - excluded_wall
    run.cpu_s = time.process_time() - cpu - excluded_cpu
    return run


def run_pipeline(
    model: Path,
    clip: Path,
    *,
    detect_fps: float,
    max_frames: int | None,
    probe: Probe | None = None,
) -> dict[str, Any]:
    """Frames, detections, events, wall and CPU seconds of one pipeline run over ``clip``."""
    sink = CountingSink()
    pipeline = build_pipeline(model, detect_fps, sink)
    run = play(pipeline, clip, max_frames, probe)
    pipeline.detector.close()
    stats = pipeline.counters.snapshot(time.monotonic())
    return {
        "clip": clip.name,
        "model": model.name,
        "detect_fps": detect_fps,
        "frames": run.frames,
        "frames_detected": stats.frames_detected,
        "frames_skipped": stats.frames_skipped,
        "all_frames_detected": stats.frames_detected == run.frames,
        "errors": stats.errors,
        "events": sink.counts(),
        "snapshot_requests": sink.snapshot_requests,
        "media_s": round(run.media_s, 3),
        "wall_s": round(run.wall_s, 3),
        "cpu_s": round(run.cpu_s, 3),
        "fps": rate(run.frames, run.wall_s),
        "detected_fps": rate(stats.frames_detected, run.wall_s),
        "detect_ms_p50_last200": stats.inference_ms_p50,
        "cpu_per_media_s": round(run.cpu_s / run.media_s, 4) if run.media_s > 0 else 0.0,
        "cpu_per_wall_s": round(run.cpu_s / run.wall_s, 3) if run.wall_s > 0 else 0.0,
        "realtime_factor": round(run.media_s / run.wall_s, 2) if run.wall_s > 0 else 0.0,
    }
