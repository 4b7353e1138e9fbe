"""``edge-agent detect``: run the detector on an image or a clip, one JSON dict per detection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.config import DetectorConfig
from agent.domain import Detections
from agent.errors import SourceError
from agent.vision.detector import load_detector
from agent.vision.detector.annotate import draw_detections

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _frames(path: Path, every: int) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot read image {path}")
        yield 0, np.asarray(image, dtype=np.uint8)
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"cannot open clip {path}")
    try:
        index = 0
        while True:
            ok, image = cap.read()
            if not ok:
                return
            if index % every == 0:
                yield index, np.asarray(image, dtype=np.uint8)
            index += 1
    finally:
        cap.release()


def _lines(frame: int, dets: Detections) -> Iterator[dict[str, Any]]:
    for i in range(len(dets)):
        x1, y1, x2, y2 = (round(float(v), 1) for v in dets.xyxy[i])
        yield {
            "frame": frame,
            "label": dets.label(i),
            "score": round(float(dets.scores[i]), 3),
            "box": [x1, y1, x2, y2],
        }


def detect_path(
    path: Path, cfg: DetectorConfig, *, every: int = 1, annotate: Path | None = None
) -> Iterator[dict[str, Any]]:
    """Detections of every ``every``-th frame of ``path``; writes the annotated last frame."""
    if not path.exists():
        raise SourceError(f"no such file: {path}")
    detector = load_detector(cfg)
    last: tuple[npt.NDArray[np.uint8], Detections] | None = None
    try:
        for index, image in _frames(path, max(1, every)):
            dets = detector.detect(image)
            last = (image, dets)
            yield from _lines(index, dets)
    finally:
        detector.close()
    if annotate is not None and last is not None:
        annotate.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(annotate), draw_detections(*last)):
            raise SourceError(f"cannot write {annotate}")
