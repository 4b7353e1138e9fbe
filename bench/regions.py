"""Regions against the whole frame: people found in the crop the motion gate picks.

The pedestrian clip (an elevated camera, people small) is upscaled by ``scale`` to stand for a
higher-resolution camera: the whole-frame pass sees exactly the clip's own detail shrunk to the
model input, a region crop sees the moving people at the model's native size. On every
``every``-th frame, each small moving blob gets its own region (at most ``max_regions``),
both passes run and the people each finds inside the region are counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.config import DetectorConfig
from agent.domain import Detections
from agent.vision.detector import load_detector
from agent.vision.motion import MotionDetector, MotionParams
from agent.vision.pipeline import crop, in_frame
from agent.vision.regions import Region, region_for


def people_in(dets: Detections, region: Region) -> int:
    """Persons whose box centre lies inside ``region``."""
    n = 0
    for i in range(len(dets)):
        if dets.label(i) != "person":
            continue
        x1, y1, x2, y2 = (float(v) for v in dets.xyxy[i])
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        n += region.x1 <= cx < region.x2 and region.y1 <= cy < region.y2
    return n


def compare_regions(
    model: Path,
    clip: Path,
    *,
    scale: float = 2.0,
    every: int = 3,
    max_frames: int = 240,
    max_regions: int = 2,
) -> dict[str, Any]:
    """Frames compared, and people found in the regions by the crop and by the whole frame."""
    detector = load_detector(DetectorConfig(model=model, labels=["person"], min_score=0.4))
    side = min(detector.input_size)
    motion = MotionDetector(MotionParams())
    cap = cv2.VideoCapture(str(clip))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = compared = crops = by_region = by_whole = 0
    try:
        while frames < max_frames:
            ok, image = cap.read()
            if not ok:
                break
            frames += 1
            big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
            big = np.ascontiguousarray(big)
            result = motion.update(big, frames / fps)
            if frames % every or not result.motion:
                continue
            regions = [region_for([b], (big.shape[1], big.shape[0]), side) for b in result.boxes]
            picked = [r for r in regions if r is not None][:max_regions]
            if not picked:
                continue
            compared += 1
            whole = detector.detect(big)
            for region in picked:
                crops += 1
                found = in_frame(detector.detect(crop(big, region)), region)
                by_region += people_in(found, region)
                by_whole += people_in(whole, region)
    finally:
        cap.release()
        detector.close()
    return {
        "clip": clip.name,
        "upscale": scale,
        "frames": frames,
        "frames_compared": compared,
        "regions_compared": crops,
        "people_found_by_region": by_region,
        "people_found_by_whole_frame": by_whole,
        "gain": round(by_region / by_whole, 2) if by_whole else None,
    }
