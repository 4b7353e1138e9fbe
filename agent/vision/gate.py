"""The motion gate: whether the detector runs on a frame that is due, and on which crop.

Pure: the caller passes the motion result, the tracks after the last detection and the time of
the last detection run. The detector runs when

- ``start``: it never ran yet;
- ``motion``: something moved that no confirmed track explains (motion mostly outside every
  box, grown by ``track_margin``, of a confirmed track seen in the last ``explains_s``): a new
  object may have come in, or a tracked one is leaving;
- ``tentative``: a track is not confirmed yet: confirm (or drop) it at the full rate;
- ``confirm``: confirmed tracks exist and ``confirm_interval_s`` passed since the last run,
  so an object that stands still for minutes stays one event, neither lost nor found again;
- ``refresh``: ``refresh_interval_s`` passed without a run (a slow periodic whole-frame look),
  or most of the picture changed at once (a light change, a cut: the motion detector
  recalibrates and sees no motion, so the whole frame is looked at once).

Otherwise the frame is skipped for no motion.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from agent.config import MotionConfig
from agent.domain import BoxPx, Frame, Track
from agent.vision.motion import MotionDetector, MotionParams, MotionResult
from agent.vision.regions import Region, region_for


class Reason(str, enum.Enum):
    START = "start"
    MOTION = "motion"
    TENTATIVE = "tentative"
    CONFIRM = "confirm"
    REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class GateParams:
    """Every threshold of the gate (see the module docstring)."""

    confirm_interval_s: float = 1.5
    refresh_interval_s: float = 30.0
    track_margin: float = 0.75
    explained: float = 0.6
    explains_s: float = 2.0
    regions: bool = True
    region_pad: float = 0.25
    region_max_area: float = 0.4


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Run the detector (``reason`` set) or not; ``region`` None means the whole frame."""

    reason: Reason | None
    region: Region | None

    @property
    def run(self) -> bool:
        return self.reason is not None


def grow(box: BoxPx, margin: float) -> BoxPx:
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return (x1 - dx, y1 - dy, x2 + dx, y2 + dy)


def covered(box: BoxPx, by: Sequence[BoxPx]) -> float:
    """The largest fraction of ``box``'s area inside any one of ``by``."""
    x1, y1, x2, y2 = box
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 1.0
    best = 0.0
    for b in by:
        w = min(x2, b[2]) - max(x1, b[0])
        h = min(y2, b[3]) - max(y1, b[1])
        if w > 0 and h > 0:
            best = max(best, w * h / area)
    return best


def unexplained(
    motion: Sequence[BoxPx], tracks: Sequence[Track], params: GateParams, ts: float
) -> bool:
    """Whether some motion is not mostly inside the (grown) box of a confirmed track seen in the
    last ``explains_s`` (a track missed for longer explains nothing: it may be leaving, or
    someone else may be coming in where it was)."""
    boxes = [
        grow(t.box, params.track_margin)
        for t in tracks
        if t.confirmed and ts - t.last_ts <= params.explains_s
    ]
    return any(covered(m, boxes) < params.explained for m in motion)


def reason(  # noqa: PLR0911 - one return per rule of the table above
    params: GateParams,
    ts: float,
    motion: MotionResult,
    tracks: Sequence[Track],
    last_run_ts: float | None,
) -> Reason | None:
    """Why the detector should run at ``ts``, or None to skip (see the module docstring)."""
    if last_run_ts is None:
        return Reason.START
    if motion.recalibrated:  # most of the picture changed at once: look at all of it once
        return Reason.REFRESH
    if motion.motion and unexplained(motion.boxes, tracks, params, ts):
        return Reason.MOTION
    if any(not t.confirmed for t in tracks):
        return Reason.TENTATIVE
    since = ts - last_run_ts
    if tracks and since >= params.confirm_interval_s:
        return Reason.CONFIRM
    if since >= params.refresh_interval_s:
        return Reason.REFRESH
    return None


def decide(  # noqa: PLR0917 - a pure function of the gate's inputs
    params: GateParams,
    ts: float,
    motion: MotionResult,
    tracks: Sequence[Track],
    last_run_ts: float | None,
    frame_size: tuple[int, int],
    min_side: int,
) -> GateDecision:
    """The gate's decision, with the crop to detect on when regions are enabled."""
    why = reason(params, ts, motion, tracks, last_run_ts)
    if why is None or not params.regions or why in (Reason.START, Reason.REFRESH):
        return GateDecision(why, None)
    boxes = list(motion.boxes) + [grow(t.box, params.track_margin) for t in tracks]
    region = region_for(
        boxes, frame_size, min_side, pad=params.region_pad, max_area=params.region_max_area
    )
    return GateDecision(why, region)


class MotionGate:
    """One camera's motion detector plus the gate's memory (the time of the last run)."""

    def __init__(self, motion: MotionDetector, params: GateParams, min_side: int) -> None:
        self.motion = motion
        self.params = params
        self.min_side = min_side
        self.last_run_ts: float | None = None

    @classmethod
    def from_config(cls, cfg: MotionConfig, min_side: int) -> MotionGate:
        """The gate ``cameras[].motion`` describes; ``min_side`` is the model's input side."""
        masks = tuple(tuple((float(p[0]), float(p[1])) for p in poly) for poly in cfg.masks)
        motion = MotionParams(
            height=cfg.height, threshold=cfg.threshold, contour_area=cfg.contour_area,
            background_s=cfg.background_s, contrast=cfg.contrast, dilate=cfg.dilate,
            recalibrate_fraction=cfg.recalibrate_fraction, recalibrate_s=cfg.recalibrate_s,
            masks=masks,
        )  # fmt: skip
        params = GateParams(
            confirm_interval_s=cfg.confirm_interval_s, refresh_interval_s=cfg.refresh_interval_s,
            explains_s=max(2.0, cfg.confirm_interval_s + 0.5),
            regions=cfg.regions, region_max_area=cfg.region_max_area,
        )  # fmt: skip
        return cls(MotionDetector(motion), params, min_side)

    def assess(self, frame: Frame, tracks: Sequence[Track]) -> GateDecision:
        """Motion in ``frame`` and the decision; a run is remembered as of ``frame.ts``."""
        result = self.motion.update(frame.image, frame.ts)
        size = (frame.width, frame.height)
        decision = decide(
            self.params, frame.ts, result, tracks, self.last_run_ts, size, self.min_side
        )
        if decision.run:
            self.last_run_ts = frame.ts
        return decision
