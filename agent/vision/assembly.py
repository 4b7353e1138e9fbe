"""Building one camera's detection pipeline from the configuration (shared by the agent and
``edge-agent evaluate``, so what is measured is what runs)."""

from __future__ import annotations

from agent.config import CameraConfig, DetectorConfig, Settings
from agent.vision.detector import Detector
from agent.vision.events import EventBuilder
from agent.vision.gate import MotionGate
from agent.vision.metrics import PipelineCounters
from agent.vision.pipeline import CameraPipeline, EventSink
from agent.vision.scene import CameraScene
from agent.vision.tiling import TiledDetector
from agent.vision.tracker import Tracker


def detector_config(settings: Settings) -> DetectorConfig:
    """The detector settings the pipeline loads: thresholds lowered to
    ``events.track_low_score`` so the tracker's second pass sees low-score detections."""
    det, low = settings.detector, settings.events.track_low_score
    return det.model_copy(
        update={
            "min_score": min(det.min_score, low),
            "label_min_score": {k: min(v, low) for k, v in det.label_min_score.items()},
        }
    )


def make_tracker(settings: Settings) -> Tracker:
    """The tracker: detections from ``detector.min_score`` (per label overrides) start tracks."""
    ev, det = settings.events, settings.detector
    return Tracker(
        iou_match=ev.iou_match, min_hits=ev.min_hits, max_lost_s=ev.end_timeout_s,
        min_confirm_s=ev.min_confirm_s,
        high_score=det.min_score, label_high_score=det.label_min_score,
    )  # fmt: skip


def make_pipeline(
    settings: Settings,
    cam: CameraConfig,
    detector: Detector,
    sink: EventSink,
    counters: PipelineCounters,
    *,
    wait: bool = True,
) -> CameraPipeline:
    """The pipeline of camera ``cam``: motion gate, detector, tracker, event builder, ``sink``.

    ``wait=False``: a shared detector's results are applied on later frames (live cameras).
    """
    ev = settings.events
    builder = EventBuilder(
        cam.id, update_interval_s=ev.update_interval_s, min_move=ev.min_move,
        snapshot_gain=ev.snapshot_gain, snapshots=settings.snapshots.enabled,
        view_width=settings.snapshots.max_width,
    )  # fmt: skip
    scene = CameraScene(cam)
    side = min(detector.input_size)
    gate = MotionGate.from_config(cam.motion, side) if cam.motion.enabled else None
    if cam.tiles is not None:
        cols, rows = cam.tiles
        detector = TiledDetector(
            detector, cols=cols, rows=rows, overlap=cam.tile_overlap,
            nms_iou=settings.detector.nms_iou,
        )  # fmt: skip
    return CameraPipeline(
        detector, make_tracker(settings), builder, sink, counters, detect_fps=cam.detect_fps,
        scene=scene if scene.active else None, gate=gate, wait=wait,
    )  # fmt: skip
