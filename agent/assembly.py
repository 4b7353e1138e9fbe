"""Building one camera's detection pipeline from the configuration (shared by the agent and
``edge-agent evaluate``, so what is measured is what runs)."""

from __future__ import annotations

from agent.config import CameraConfig, Settings
from agent.detector import Detector
from agent.events import EventBuilder
from agent.metrics import PipelineCounters
from agent.pipeline import CameraPipeline, EventSink
from agent.tracker import Tracker


def make_tracker(settings: Settings) -> Tracker:
    ev = settings.events
    return Tracker(iou_match=ev.iou_match, min_hits=ev.min_hits, max_lost_s=ev.end_timeout_s)


def make_pipeline(
    settings: Settings,
    cam: CameraConfig,
    detector: Detector,
    sink: EventSink,
    counters: PipelineCounters,
) -> CameraPipeline:
    """The pipeline of camera ``cam``: detector, tracker, event builder, ``sink``."""
    ev = settings.events
    builder = EventBuilder(
        cam.id, update_interval_s=ev.update_interval_s, min_move=ev.min_move,
        snapshot_gain=ev.snapshot_gain, snapshots=settings.snapshots.enabled,
    )  # fmt: skip
    return CameraPipeline(
        detector, make_tracker(settings), builder, sink, counters, detect_fps=cam.detect_fps
    )
