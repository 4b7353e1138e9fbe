"""Raw model outputs -> boxes, scores, class ids; and class-aware NMS. Pure numpy.

Every decoder returns ``(boxes, scores, class_ids)``: float32 ``[N, 4]`` xyxy in model-input
pixels, float32 ``[N]``, int64 ``[N]``; one entry per anchor whose best class score is at least
``score_threshold`` (the best class only). Sizes are ``(width, height)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Decoded = tuple[FloatArray, FloatArray, IntArray]


def empty_decoded() -> Decoded:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


def grid_cells(input_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Feature-map ``(columns, rows)`` of one stride (rounded up, as conv strides do)."""
    width, height = input_size
    return -(-width // stride), -(-height // stride)


def grid_points(input_size: tuple[int, int], strides: Sequence[int]) -> npt.NDArray[np.float32]:
    """``[N, 3]`` of (column, row, stride) for every cell, stride by stride, row-major."""
    levels = []
    for stride in strides:
        cols, rows = grid_cells(input_size, stride)
        ys, xs = np.mgrid[0:rows, 0:cols]
        level = np.stack([xs.ravel(), ys.ravel(), np.full(rows * cols, stride)], axis=1)
        levels.append(level.astype(np.float32))
    return np.concatenate(levels, axis=0)


def _squeeze_batch(out: npt.NDArray[np.floating], name: str) -> FloatArray:
    arr = np.asarray(out, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected [1, A, B] or [A, B], got {np.shape(out)}")
    return arr


def _best_class(
    scores: FloatArray, score_threshold: float
) -> tuple[npt.NDArray[np.intp], FloatArray, IntArray]:
    """Rows whose best class score passes, with that score and class."""
    class_ids = scores.argmax(axis=1)
    best = np.take_along_axis(scores, class_ids[:, None], axis=1)[:, 0]
    keep = np.flatnonzero(best >= score_threshold)
    return keep, best[keep], class_ids[keep].astype(np.int64)


def _objectness_rows(arr: FloatArray, score_threshold: float) -> npt.NDArray[np.intp]:
    """Rows that can pass: with class scores in 0..1, obj * class <= obj (a cheap pre-filter)."""
    return np.flatnonzero(arr[:, 4] >= score_threshold)


def cxcywh_to_xyxy(boxes: FloatArray) -> FloatArray:
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)


def decode_yolox(
    out: npt.NDArray[np.floating],
    input_size: tuple[int, int],
    strides: Sequence[int],
    score_threshold: float,
) -> Decoded:
    """YOLOX ``[1, N, 5 + C]``: (dx, dy, log w, log h) per grid cell, obj and classes sigmoid.

    Centre = (cell + d) * stride, size = exp(log size) * stride; score = obj * class.
    """
    arr = _squeeze_batch(out, "yolox output")
    grid = grid_points(input_size, strides)
    if arr.shape[0] != len(grid) or arr.shape[1] < 6:
        raise ValueError(f"yolox output {arr.shape} does not match {len(grid)} grid cells")
    rows = _objectness_rows(arr, score_threshold)
    keep, scores, class_ids = _best_class(arr[rows, 5:] * arr[rows, 4:5], score_threshold)
    raw, cells = arr[rows[keep]], grid[rows[keep]]
    stride = cells[:, 2:3]
    centre = (raw[:, 0:2] + cells[:, 0:2]) * stride
    size = np.exp(np.minimum(raw[:, 2:4], 20.0)) * stride
    return cxcywh_to_xyxy(np.concatenate([centre, size], axis=1)), scores, class_ids


def decode_yolov5(out: npt.NDArray[np.floating], score_threshold: float) -> Decoded:
    """Ultralytics YOLOv5 ``[1, N, 5 + C]``: cx, cy, w, h in input pixels, obj, classes."""
    arr = _squeeze_batch(out, "yolov5 output")
    if arr.shape[1] < 6:
        raise ValueError(f"yolov5 output {arr.shape}: expected [N, 5 + classes]")
    rows = _objectness_rows(arr, score_threshold)
    keep, scores, class_ids = _best_class(arr[rows, 5:] * arr[rows, 4:5], score_threshold)
    return cxcywh_to_xyxy(arr[rows[keep], 0:4]), scores, class_ids


def decode_yolov8(out: npt.NDArray[np.floating], score_threshold: float) -> Decoded:
    """Ultralytics YOLOv8/YOLO11 ``[1, 4 + C, N]``: cx, cy, w, h in input pixels, classes."""
    arr = _squeeze_batch(out, "yolov8 output")
    if arr.shape[0] < 5:
        raise ValueError(f"yolov8 output {arr.shape}: expected [4 + classes, N]")
    rows = arr.T
    keep, scores, class_ids = _best_class(rows[:, 4:], score_threshold)
    return cxcywh_to_xyxy(rows[keep, 0:4]), scores, class_ids


def _softmax(x: FloatArray, axis: int) -> FloatArray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    out: FloatArray = e / e.sum(axis=axis, keepdims=True)
    return out


def decode_gfl(
    cls_maps: Sequence[npt.NDArray[np.floating]],
    dist_maps: Sequence[npt.NDArray[np.floating]],
    input_size: tuple[int, int],
    strides: Sequence[int],
    *,
    reg_max: int,
    score_threshold: float,
    center_offset: float = 0.0,
) -> Decoded:
    """GFL heads (PicoDet, NanoDet): per stride, class maps ``[1, N, C]`` (sigmoid) and
    distance maps ``[1, N, 4 * (reg_max + 1)]`` (left, top, right, bottom; bins per side).

    A side's distance is the softmax-weighted mean bin index times the stride, measured from
    the anchor point ``(cell + center_offset) * stride``.
    """
    if not len(cls_maps) == len(dist_maps) == len(strides):
        raise ValueError("decode_gfl needs one class map and one distance map per stride")
    bins = reg_max + 1
    boxes, scores, class_ids = [], [], []
    for cls_map, dist_map, stride in zip(cls_maps, dist_maps, strides, strict=True):
        cls = _squeeze_batch(cls_map, "gfl class map")
        dist = _squeeze_batch(dist_map, "gfl distance map")
        grid = grid_points(input_size, [stride])
        if cls.shape[0] != len(grid) or dist.shape != (len(grid), 4 * bins):
            raise ValueError(
                f"gfl stride {stride}: maps {cls.shape}, {dist.shape} do not match "
                f"{len(grid)} cells and {4 * bins} distance bins"
            )
        keep, level_scores, level_ids = _best_class(cls, score_threshold)
        probs = _softmax(dist[keep].reshape(-1, 4, bins), axis=2)
        sides = probs @ np.arange(bins, dtype=np.float32) * stride
        anchor = (grid[keep, 0:2] + center_offset) * stride
        boxes.append(np.concatenate([anchor - sides[:, 0:2], anchor + sides[:, 2:4]], axis=1))
        scores.append(level_scores)
        class_ids.append(level_ids)
    if not boxes:
        return empty_decoded()
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(class_ids).astype(np.int64),
    )


def box_iou(box: npt.NDArray[np.floating[Any]], boxes: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """IoU of one xyxy box against ``[N, 4]`` boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    out: FloatArray = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)
    return out


def nms(
    boxes: FloatArray,
    scores: FloatArray,
    class_ids: IntArray,
    iou_threshold: float,
    max_det: int,
) -> npt.NDArray[np.int64]:
    """Greedy class-aware NMS: indices of the kept boxes, best score first, at most ``max_det``.

    A box is suppressed by a better-scoring box of the same class with IoU > ``iou_threshold``.
    Classes are separated by shifting each class's boxes to its own region of the plane.
    """
    if len(scores) == 0 or max_det <= 0:
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes, dtype=np.float64)
    span = float(np.abs(boxes).max()) * 2 + 1
    shifted = boxes + (np.asarray(class_ids, dtype=np.float64) * span)[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    kept: list[int] = []
    while order.size and len(kept) < max_det:
        best = int(order[0])
        kept.append(best)
        rest = order[1:]
        order = rest[box_iou(shifted[best], shifted[rest]) <= iou_threshold]
    return np.asarray(kept, dtype=np.int64)
