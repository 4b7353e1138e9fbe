"""Polygons in normalised frame coordinates (0..1): checks, point tests, pixel masks.

Pure numpy/OpenCV; every function takes plain tuples so config, zones, masks and the ``draw``
command share one notion of a polygon.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

Point = tuple[float, float]
Polygon = tuple[Point, ...]


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_segment(p: Point, a: Point, b: Point) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Whether segment ab and segment cd intersect (touching counts)."""
    d1, d2 = _cross(c, d, a), _cross(c, d, b)
    d3, d4 = _cross(a, b, c), _cross(a, b, d)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and 0 not in (d1, d2, d3, d4):
        return True
    return (
        (d1 == 0 and _on_segment(a, c, d))
        or (d2 == 0 and _on_segment(b, c, d))
        or (d3 == 0 and _on_segment(c, a, b))
        or (d4 == 0 and _on_segment(d, a, b))
    )


def polygon_problem(points: Sequence[Sequence[float]]) -> str | None:
    """Why ``points`` is not a usable polygon (None if it is): fewer than three points, a
    coordinate outside 0..1, zero area, or two edges crossing (self-intersecting)."""
    if len(points) < 3:
        return f"a polygon needs at least 3 points, got {len(points)}"
    for i, p in enumerate(points):
        if len(p) != 2:
            return f"point {i} must be [x, y]"
        if not all(0.0 <= float(v) <= 1.0 for v in p):
            return f"point {i} {list(p)} is outside the frame: x and y must be in 0..1"
    pts = [(float(p[0]), float(p[1])) for p in points]
    n = len(pts)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbouring edges share a point
            if segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                return f"the polygon is self-intersecting: edges {i} and {j} cross"
    if abs(area(pts)) < 1e-9:
        return "the polygon has no area (its points are on one line)"
    return None


def area(points: Sequence[Point]) -> float:
    """Signed area (shoelace)."""
    n = len(points)
    return 0.5 * sum(
        points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
        for i in range(n)
    )


def contains(poly: Polygon, x: float, y: float) -> bool:
    """Whether the normalised point (x, y) is inside ``poly`` (ray casting; edges count in)."""
    inside = False
    n = len(poly)
    for i in range(n):
        (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % n]
        if _on_segment((x, y), (x1, y1), (x2, y2)) and _cross((x1, y1), (x2, y2), (x, y)) == 0:
            return True
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


def to_pixels(poly: Polygon, width: int, height: int) -> npt.NDArray[np.int32]:
    """The polygon as OpenCV pixel points ``[N, 1, 2]``."""
    pts = np.array([[x * width, y * height] for x, y in poly], dtype=np.float64)
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def fill_mask(polys: Sequence[Polygon], width: int, height: int) -> npt.NDArray[np.uint8]:
    """A ``height x width`` mask, 255 inside any of ``polys`` (edges included), else 0."""
    mask = np.zeros((height, width), np.uint8)
    if polys:
        cv2.fillPoly(mask, [to_pixels(p, width, height) for p in polys], 255)
        cv2.polylines(mask, [to_pixels(p, width, height) for p in polys], True, 255, 1)
    return mask


def anchor(box: tuple[float, float, float, float], width: int, height: int) -> Point:
    """The point of a pixel box that says where an object is: its bottom centre (the feet of a
    person, the wheels of a car), normalised."""
    x1, _, x2, y2 = box
    return ((x1 + x2) / 2 / max(width, 1), y2 / max(height, 1))
