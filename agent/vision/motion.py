"""A cheap motion detector on a small grey frame: it decides whether the object detector runs.

Pure and deterministic: no threads, no wall clock; the background is advanced by frame
timestamps, so a file gives the same answer at any playback speed. Per frame:

1. grey, shrunk to ``height`` rows (the aspect ratio kept) through a Gaussian pyramid;
2. contrast normalised (the ``contrast_percentile`` and its complement stretched to 0..255), so
   a dim picture and a bright one look alike;
3. a light blur, then the absolute difference to a running background average that learns with
   a time constant of ``background_s`` seconds;
4. threshold (``threshold`` grey levels), masked areas cleared (normalised polygons), dilated;
5. contours of at least ``contour_area`` small-frame pixels become motion boxes, mapped back to
   pixels of the full frame.

When more than ``recalibrate_fraction`` of the frame changed at once (a lamp, IR switching at
dusk, the camera's auto exposure) the background is reset to the current frame and no motion
is reported for ``recalibrate_s`` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from agent.domain import BoxPx
from agent.vision.geometry import polygon_problem

Image = npt.NDArray[np.uint8]
Polygon = tuple[tuple[float, float], ...]
"""A polygon of normalised ``(x, y)`` points, 0..1 of the frame's width and height."""


@dataclass(frozen=True, slots=True)
class MotionParams:
    """Every threshold of the motion detector (see the module docstring)."""

    height: int = 100
    threshold: int = 25
    contour_area: int = 12
    background_s: float = 4.0
    contrast: bool = True
    contrast_percentile: float = 4.0
    blur: int = 3
    dilate: int = 2
    recalibrate_fraction: float = 0.4
    recalibrate_s: float = 1.0
    masks: tuple[Polygon, ...] = ()

    def __post_init__(self) -> None:
        if self.height < 8:
            raise ValueError("height must be >= 8")
        if not 0 < self.threshold < 255:
            raise ValueError("threshold must be in 1..254")
        if self.contour_area < 1:
            raise ValueError("contour_area must be >= 1")
        if self.background_s <= 0:
            raise ValueError("background_s must be > 0")
        if not 0 <= self.contrast_percentile < 50:
            raise ValueError("contrast_percentile must be in [0, 50)")
        if self.blur < 0 or self.dilate < 0:
            raise ValueError("blur and dilate must be >= 0")
        if not 0 < self.recalibrate_fraction <= 1:
            raise ValueError("recalibrate_fraction must be in (0, 1]")
        if self.recalibrate_s < 0:
            raise ValueError("recalibrate_s must be >= 0")
        for i, poly in enumerate(self.masks):
            problem = polygon_problem(poly)
            if problem:
                raise ValueError(f"masks[{i}]: {problem}")


@dataclass(frozen=True, slots=True)
class MotionResult:
    """What moved in one frame.

    ``boxes`` in pixels of the full frame; ``changed`` the fraction of the (unmasked) small
    frame that differs from the background; ``calibrating`` while the background is (re)learnt
    (first frame, after a global light change, after time went backwards). ``recalibrated``
    on the frame where most of the picture changed at once: a light change, or a cut to a
    different scene (something may be there: the gate looks at the whole frame once).
    """

    ts: float
    boxes: tuple[BoxPx, ...]
    changed: float
    calibrating: bool
    recalibrated: bool = False

    @property
    def motion(self) -> bool:
        return bool(self.boxes)


@dataclass
class _State:
    background: npt.NDArray[np.float32]
    last_ts: float
    calibrate_until: float
    shape: tuple[int, int]
    mask: Image | None = field(default=None)


def small_size(width: int, height: int, small_height: int) -> tuple[int, int]:
    """The small frame's ``(width, height)``: ``small_height`` rows, aspect ratio kept."""
    h = min(small_height, height)
    return max(1, round(width * h / height)), h


def mask_image(masks: Sequence[Polygon], size: tuple[int, int]) -> Image | None:
    """255 where motion counts, 0 inside the masks; None without masks. ``size`` is (w, h)."""
    if not masks:
        return None
    width, height = size
    out = np.full((height, width), 255, np.uint8)
    scale = np.array([width, height], np.float64)
    polys = [np.round(np.asarray(p, np.float64) * scale).astype(np.int32) for p in masks]
    cv2.fillPoly(out, polys, 0)
    return out


def normalise_contrast(grey: Image, percentile: float) -> Image:
    """Stretch ``grey`` so its ``percentile`` and ``100 - percentile`` become 0 and 255."""
    lo, hi = np.percentile(grey, (percentile, 100.0 - percentile))
    if hi - lo < 1.0:
        return grey
    scaled = (grey.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    out: Image = np.clip(scaled, 0, 255).astype(np.uint8)
    return out


def shrink(grey: Image, size: tuple[int, int]) -> Image:
    """``grey`` at ``size`` (w, h): Gaussian pyramid halvings (anti-aliased and about four
    times cheaper than an area resize by an odd factor), then one bilinear step."""
    while grey.shape[0] >= 2 * size[1] and grey.shape[1] >= 2 * size[0]:
        grey = np.asarray(cv2.pyrDown(grey), np.uint8)
    if (grey.shape[1], grey.shape[0]) == size:
        return grey
    return np.asarray(cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR), np.uint8)


def prepare(image: Image, params: MotionParams) -> Image:
    """The small, grey, contrast-normalised, blurred frame the detector compares."""
    height, width = image.shape[:2]
    size = small_size(width, height, params.height)
    grey: Image = shrink(np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.uint8), size)
    if params.contrast:
        grey = normalise_contrast(grey, params.contrast_percentile)
    if params.blur:
        k = 2 * params.blur + 1
        grey = np.asarray(cv2.GaussianBlur(grey, (k, k), 0), np.uint8)
    out: Image = np.ascontiguousarray(grey, dtype=np.uint8)
    return out


def motion_boxes(binary: Image, min_area: int, full_size: tuple[int, int]) -> tuple[BoxPx, ...]:
    """Bounding boxes of contours of at least ``min_area`` pixels, scaled to ``full_size``."""
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    sx = full_size[0] / binary.shape[1]
    sy = full_size[1] / binary.shape[0]
    boxes: list[BoxPx] = []
    for c in contours:
        if cv2.contourArea(c) < min_area:
            continue
        x, y, w, h = cv2.boundingRect(c)
        boxes.append((x * sx, y * sy, (x + w) * sx, (y + h) * sy))
    boxes.sort()
    return tuple(boxes)


class MotionDetector:
    """Running-background motion detection for one camera (see the module docstring)."""

    def __init__(self, params: MotionParams) -> None:
        self.params = params
        self._state: _State | None = None

    def reset(self) -> None:
        self._state = None

    def update(self, image: Image, ts: float) -> MotionResult:
        """Compare the BGR ``image`` taken at ``ts`` with the background, then learn it."""
        p = self.params
        grey = prepare(image, p)
        full = (int(image.shape[1]), int(image.shape[0]))
        st = self._state
        if st is None or ts < st.last_ts or st.shape != grey.shape:
            self._state = self._calibrate(grey, ts)
            return MotionResult(ts, (), 0.0, True)
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(st.background))
        _, binary = cv2.threshold(diff, p.threshold, 255, cv2.THRESH_BINARY)
        if st.mask is not None:
            binary = cv2.bitwise_and(binary, st.mask)
        counted = grey.size if st.mask is None else max(int(np.count_nonzero(st.mask)), 1)
        changed = float(np.count_nonzero(binary)) / counted
        if changed > p.recalibrate_fraction:
            self._state = self._calibrate(grey, ts)
            return MotionResult(ts, (), round(changed, 4), True, recalibrated=True)
        alpha = 1.0 - math.exp(-(ts - st.last_ts) / p.background_s)
        cv2.accumulateWeighted(grey, st.background, alpha)
        st.last_ts = ts
        if ts < st.calibrate_until:
            return MotionResult(ts, (), round(changed, 4), True)
        if p.dilate:
            binary = cv2.dilate(binary, np.ones((3, 3), np.uint8), iterations=p.dilate)
        boxes = motion_boxes(np.asarray(binary, np.uint8), p.contour_area, full)
        return MotionResult(ts, boxes, round(changed, 4), False)

    def _calibrate(self, grey: Image, ts: float) -> _State:
        h, w = grey.shape
        mask = mask_image(self.params.masks, (w, h))
        until = ts + self.params.recalibrate_s
        return _State(grey.astype(np.float32), ts, until, (h, w), mask)
