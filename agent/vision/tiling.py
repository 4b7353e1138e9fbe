"""Small and distant objects: detect on regions of the frame at full resolution.

A 416x416 model sees a 1280x720 frame shrunk three times: a person 30 pixels tall becomes 10 and
is lost. :func:`detect_in_regions` runs the detector on crops of the frame (tiles, or the motion
gate's regions where it exists) besides the whole frame and merges everything with class-aware
NMS, boxes in the frame's pixels. :class:`TiledDetector` wraps a detector so that the pipeline
needs no change. Each region costs one more inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.domain import COCO_LABELS, Detections
from agent.vision.detector import Detector
from agent.vision.detector.decode import nms
from agent.vision.tracker import containment, iou_matrix

Region = tuple[int, int, int, int]
"""A crop of the frame in pixels, ``(x1, y1, x2, y2)``."""


def tile_regions(width: int, height: int, cols: int, rows: int, overlap: float) -> list[Region]:
    """A ``cols x rows`` grid of crops covering the frame, neighbours overlapping by
    ``overlap`` of a tile (so an object cut by one tile's edge is whole in the next)."""
    if cols < 1 or rows < 1 or not 0 <= overlap < 1:
        raise ValueError("need cols, rows >= 1 and 0 <= overlap < 1")
    tw = width / (cols - (cols - 1) * overlap)
    th = height / (rows - (rows - 1) * overlap)
    out = []
    for r in range(rows):
        for c in range(cols):
            x1 = round(c * tw * (1 - overlap))
            y1 = round(r * th * (1 - overlap))
            out.append((x1, y1, min(round(x1 + tw), width), min(round(y1 + th), height)))
    return out


def detect_in_regions(
    detector: Detector,
    image: npt.NDArray[np.uint8],
    regions: Sequence[Region],
    *,
    nms_iou: float,
    whole: bool = True,
    max_det: int = 300,
    max_contained: float = 0.7,
) -> Detections:
    """Detections of the whole frame (if ``whole``) and of each region.

    The whole frame's detections win: a region's detection overlapping one of them (IoU above
    ``nms_iou``) or lying ``max_contained`` inside one is the same object, often the part of it
    a region's edge cut off. The regions' detections are merged among themselves by NMS and
    the same containment rule.
    """
    full = detector.detect(image) if whole else None
    parts: list[Detections] = []
    offsets: list[tuple[int, int]] = []
    for x1, y1, x2, y2 in regions:
        if x2 - x1 < 8 or y2 - y1 < 8:
            continue
        parts.append(detector.detect(np.ascontiguousarray(image[y1:y2, x1:x2])))
        offsets.append((x1, y1))
    labels = full.labels if full is not None else parts[0].labels if parts else COCO_LABELS
    xyxy = np.concatenate(
        [np.zeros((0, 4), np.float32)]
        + [
            p.xyxy + np.array([dx, dy, dx, dy], np.float32)
            for p, (dx, dy) in zip(parts, offsets, strict=True)
        ]
    )
    scores = np.concatenate([np.zeros(0, np.float32)] + [p.scores for p in parts])
    class_ids = np.concatenate([np.zeros(0, np.int64)] + [p.class_ids for p in parts])
    keep = nms(xyxy, scores, class_ids, nms_iou, max_det)
    keep = keep[~_parts(xyxy[keep], class_ids[keep], max_contained)]
    xyxy, scores, class_ids = xyxy[keep], scores[keep], class_ids[keep]
    if full is not None and len(full):
        a, b = xyxy.astype(np.float64), full.xyxy.astype(np.float64)
        same = class_ids[:, None] == full.class_ids[None, :]
        dup = same & ((iou_matrix(a, b) > nms_iou) | (containment(a, b) >= max_contained))
        new = ~dup.any(axis=1)
        xyxy = np.concatenate([full.xyxy, xyxy[new]])
        scores = np.concatenate([full.scores, scores[new]])
        class_ids = np.concatenate([full.class_ids, class_ids[new]])
    return Detections(
        xyxy.astype(np.float32), scores.astype(np.float32), class_ids.astype(np.int64), labels
    )


def _parts(
    xyxy: npt.NDArray[np.float32], class_ids: npt.NDArray[np.int64], max_contained: float
) -> npt.NDArray[np.bool_]:
    """Boxes lying mostly inside a larger box of the same class: the part of an object a tile
    edge cut off, which NMS keeps (its IoU with the whole object is small)."""
    boxes = xyxy.astype(np.float64)
    inside = containment(boxes, boxes)
    np.fill_diagonal(inside, 0.0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    same = class_ids[:, None] == class_ids[None, :]
    larger = area[None, :] > area[:, None]
    return np.asarray(((inside >= max_contained) & same & larger).any(axis=1))


class TiledDetector:
    """A :class:`~agent.vision.detector.Detector` that also detects on a grid of tiles."""

    def __init__(
        self, inner: Detector, *, cols: int, rows: int, overlap: float, nms_iou: float
    ) -> None:
        self.inner = inner
        self.cols, self.rows, self.overlap, self.nms_iou = cols, rows, overlap, nms_iou

    @property
    def family(self) -> str:
        return self.inner.family

    @property
    def input_size(self) -> tuple[int, int]:
        return self.inner.input_size

    def detect(self, image: npt.NDArray[np.uint8]) -> Detections:
        h, w = image.shape[:2]
        regions = tile_regions(w, h, self.cols, self.rows, self.overlap)
        return detect_in_regions(self.inner, image, regions, nms_iou=self.nms_iou)

    def close(self) -> None:
        """Nothing to release: the inner detector is shared and closed by its owner."""
