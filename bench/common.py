"""Shared pieces: where the real models and clips live, the run plan, timing summaries."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from agent.config import DetectorConfig, EventsConfig
from agent.vision.events import EventBuilder
from agent.vision.tracker import Tracker

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = Path(os.environ.get("EDGE_AGENT_SHARED", REPO.parent / "shared"))

MODEL_FILES: dict[str, str] = {
    "yolox_nano_416": "yolox_nano_416.onnx",
    "picodet_s_320": "picodet_s_320_coco.onnx",
    "nanodet_m_320": "nanodet_m_320.onnx",
}
DEFAULT_MODEL = "yolox_nano_416"
MAIN_CLIP = "one-by-one-person-detection.mp4"
OTHER_CLIP = "degirum_TrafficHD_short.mp4"
SAMPLE_FRAME = 120  # one-by-one clip at 12 s: a person stands in the room

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Plan:
    """How much work each section does; ``frames=None`` means the whole clip."""

    frames: int | None
    other_clip_frames: int
    warmup: int
    runs: int
    snapshot_runs: int
    outbox_puts: int
    outbox_max_s: float
    probe_every: int  # every-frame pipeline: sample bare inference every this many frames
    probe_runs: int  # ... this many times


FULL = Plan(
    frames=None, other_clip_frames=100, warmup=10, runs=50, snapshot_runs=50,
    outbox_puts=1000, outbox_max_s=10.0, probe_every=50, probe_runs=2,
)  # fmt: skip
QUICK = Plan(
    frames=300, other_clip_frames=20, warmup=2, runs=8, snapshot_runs=10,
    outbox_puts=25, outbox_max_s=2.0, probe_every=30, probe_runs=2,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Assets:
    """The shared folder: real ONNX models and real footage."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def media(self) -> Path:
        return self.root / "media"

    def model(self, name: str) -> Path:
        return self.models / MODEL_FILES[name]

    def clip(self, name: str) -> Path:
        return self.media / name

    def missing(self) -> list[Path]:
        """The files the benchmark needs that are not there."""
        wanted = [self.model(n) for n in MODEL_FILES] + [
            self.clip(MAIN_CLIP),
            self.clip(OTHER_CLIP),
        ]
        return [p for p in wanted if not p.is_file()]


def detector_config(model: Path) -> DetectorConfig:
    """The agent's default detector settings (threads=2, no spinning) for ``model``."""
    return DetectorConfig(model=model, threads=2, spin=False)


def make_tracker(cfg: EventsConfig) -> Tracker:
    """The tracker the agent builds from its events config (default detector thresholds)."""
    return Tracker(
        iou_match=cfg.iou_match,
        min_hits=cfg.min_hits,
        max_lost_s=cfg.end_timeout_s,
        min_confirm_s=cfg.min_confirm_s,
        high_score=DetectorConfig().min_score,
    )


def make_builder(camera: str, cfg: EventsConfig) -> EventBuilder:
    """The event builder the agent builds from its events config."""
    return EventBuilder(
        camera,
        update_interval_s=cfg.update_interval_s,
        min_move=cfg.min_move,
        snapshot_gain=cfg.snapshot_gain,
    )


def read_frame(clip: Path, index: int) -> Image:
    """Frame ``index`` of ``clip`` (decoded sequentially, so it is exact), BGR uint8."""
    cap = cv2.VideoCapture(str(clip))
    try:
        for _ in range(index + 1):
            ok, image = cap.read()
            if not ok:
                raise ValueError(f"{clip} has fewer than {index + 1} frames")
    finally:
        cap.release()
    return np.ascontiguousarray(image, dtype=np.uint8)


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    """p50/p95/mean in milliseconds of durations given in seconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p95": round(float(np.percentile(ms, 95)), 3),
        "mean": round(float(ms.mean()), 3),
        "n": len(ms),
    }


def rate(count: float, seconds: float) -> float:
    """``count / seconds`` rounded for the report (0 when nothing was timed)."""
    return round(count / seconds, 2) if seconds > 0 else 0.0
