"""Regions (Frigate's idea): detect on a crop around what moved, at the model's input size.

A person 40 pixels tall in a 1920x1080 frame is 15 pixels tall once the whole frame is
shrunk to a 416x416 model input: too small to find. Cropping a square around the motion and
shrinking that instead keeps them large enough. Pure functions; boxes are pixel ``xyxy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.domain import BoxPx


@dataclass(frozen=True, slots=True)
class Region:
    """A crop of the frame in integer pixels, ``x2``/``y2`` exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        if self.x2 <= self.x1 or self.y2 <= self.y1 or self.x1 < 0 or self.y1 < 0:
            raise ValueError(f"empty or negative region {self}")

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1


def union(boxes: Sequence[BoxPx]) -> BoxPx | None:
    """The smallest box holding every box, None for none."""
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _place(centre: float, side: int, limit: int) -> int:
    """The start of a ``side``-long span centred on ``centre``, shifted to fit in 0..limit."""
    start = round(centre - side / 2)
    return min(max(start, 0), limit - side)


def region_for(
    boxes: Sequence[BoxPx],
    frame_size: tuple[int, int],
    min_side: int,
    *,
    pad: float = 0.25,
    max_area: float = 0.4,
) -> Region | None:
    """A square crop around ``boxes``, or None when the whole frame should be used.

    The union of ``boxes`` is padded by ``pad`` of its larger side on every side, squared,
    grown to at least ``min_side`` (the model's input side: never upscale a tiny crop) and
    shifted to lie inside the frame (``frame_size`` is ``(width, height)``). None when there
    are no boxes, or when the square would not fit or would cover more than ``max_area`` of
    the frame: then the whole frame is as good and sees everything.
    """
    box = union(boxes)
    if box is None:
        return None
    width, height = frame_size
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1)
    side = max(math.ceil(side * (1 + 2 * pad)), min_side)
    if side > min(width, height) or side * side > max_area * width * height:
        return None
    rx = _place((x1 + x2) / 2, side, width)
    ry = _place((y1 + y2) / 2, side, height)
    return Region(rx, ry, rx + side, ry + side)
