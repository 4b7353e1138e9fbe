"""Decode-only throughput: ``cv2.VideoCapture.read`` in a loop, nothing else."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2

from bench.common import rate


def _one_pass(clip: Path, limit: int | None) -> tuple[int, float, tuple[int, int]]:
    """Frames read, seconds spent reading (opening excluded) and the frame size."""
    cap = cv2.VideoCapture(str(clip))
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {clip}")
    frames, size = 0, (0, 0)
    try:
        started = time.perf_counter()
        while limit is None or frames < limit:
            ok, image = cap.read()
            if not ok:
                break
            frames += 1
            size = (int(image.shape[1]), int(image.shape[0]))
        return frames, time.perf_counter() - started, size
    finally:
        cap.release()


def decode_fps(clip: Path, *, max_frames: int | None, min_frames: int = 1) -> dict[str, Any]:
    """Decode fps of ``clip``: up to ``max_frames``, replayed until ``min_frames`` were read."""
    frames, seconds, passes, size = 0, 0.0, 0, (0, 0)
    while frames < min_frames or passes == 0:
        left = None if max_frames is None else max_frames - frames
        n, s, size = _one_pass(clip, left)
        if n == 0:
            raise RuntimeError(f"{clip}: no frame could be decoded")
        frames, seconds, passes = frames + n, seconds + s, passes + 1
        if left is not None and n >= left:
            break
    return {
        "clip": clip.name,
        "width": size[0],
        "height": size[1],
        "frames": frames,
        "passes": passes,
        "seconds": round(seconds, 3),
        "fps": rate(frames, seconds),
        "megapixels_per_s": rate(frames * size[0] * size[1] / 1e6, seconds),
    }
