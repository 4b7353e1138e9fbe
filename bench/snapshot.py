"""Snapshot cost: draw the box, scale to ``max_width``, JPEG-encode (the agent's defaults)."""

from __future__ import annotations

import time
from typing import Any

from agent.config import SnapshotsConfig
from agent.domain import Frame, SnapshotRequest
from agent.vision.snapshot import render
from bench.common import Image, summary_ms


def snapshot_request(image: Image) -> SnapshotRequest:
    """A request for a person-sized box in the middle of ``image``."""
    h, w = image.shape[:2]
    frame = Frame("bench", 0, 0.0, 1_700_000_000.0, image)
    box = (w * 0.4, h * 0.2, w * 0.6, h * 0.9)
    return SnapshotRequest("0" * 32, frame, box, "person", 0.87)


def render_jpeg(image: Image, cfg: SnapshotsConfig | None = None) -> bytes:
    """The JPEG the agent would publish for ``image``."""
    cfg = cfg or SnapshotsConfig()
    return render(snapshot_request(image), max_width=cfg.max_width, quality=cfg.quality)


def snapshot_stats(image: Image, *, warmup: int, runs: int) -> dict[str, Any]:
    """p50/p95 of ``render`` (draw + resize + JPEG) with the default snapshot settings."""
    cfg = SnapshotsConfig()
    request = snapshot_request(image)
    jpeg = b""
    for _ in range(warmup):
        jpeg = render(request, max_width=cfg.max_width, quality=cfg.quality)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        jpeg = render(request, max_width=cfg.max_width, quality=cfg.quality)
        samples.append(time.perf_counter() - started)
    return {
        "frame": [int(image.shape[1]), int(image.shape[0])],
        "max_width": cfg.max_width,
        "quality": cfg.quality,
        "jpeg_bytes": len(jpeg),
        "render_ms": summary_ms(samples),
    }
