"""``edge-agent draw``: a camera's picture with its zones and masks drawn and labelled, so a
technician can check a config at the house.

Privacy masks are drawn filled black, as the agent sees the frame; zones, object masks (and
motion masks, when the config has them) are outlined in their own colour with their names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from agent.capture.sources import make_source
from agent.config import CameraConfig, Settings
from agent.errors import ConfigError, SourceError
from agent.vision.geometry import Polygon, to_pixels
from agent.vision.scene import PrivacyMask, as_polygon

Image = npt.NDArray[np.uint8]

ZONE = (0, 200, 255)  # BGR: amber
OBJECT_MASK = (255, 120, 0)  # blue
MOTION_MASK = (200, 0, 200)  # magenta
PRIVACY = (0, 0, 255)  # red


@dataclass(frozen=True, slots=True)
class Shape:
    """One polygon to draw: what it is, its caption, its colour."""

    kind: str
    caption: str
    polygon: Polygon
    colour: tuple[int, int, int]


def shapes(cam: CameraConfig) -> list[Shape]:
    """Every polygon the camera's config defines, captioned."""
    out = [
        Shape("privacy", f"privacy {i}", as_polygon(p), PRIVACY)
        for i, p in enumerate(cam.privacy_masks)
    ]
    for z in cam.zones:
        extra = []
        if z.labels:
            extra.append(",".join(z.labels))
        if z.name in cam.required_zones:
            extra.append("required")
        if z.loitering_s is not None:
            extra.append(f"loiter {z.loitering_s:g}s")
        caption = f"zone {z.name}" + (f" ({'; '.join(extra)})" if extra else "")
        out.append(Shape("zone", caption, as_polygon(z.polygon), ZONE))
    for label, f in cam.filters.items():
        out += [
            Shape("object_mask", f"ignore {label} {i}", as_polygon(m), OBJECT_MASK)
            for i, m in enumerate(f.masks)
        ]
    motion = getattr(cam, "motion", None)  # the motion gate's masks, when configured
    for i, m in enumerate(getattr(motion, "masks", None) or []):
        out.append(Shape("motion_mask", f"motion mask {i}", as_polygon(m), MOTION_MASK))
    return out


def render(image: Image, items: Sequence[Shape]) -> Image:
    """A copy of ``image`` with the privacy masks blacked out and every shape drawn."""
    h, w = image.shape[:2]
    privacy = [s.polygon for s in items if s.kind == "privacy"]
    out: Image = PrivacyMask(privacy).apply(image).copy()
    thick = max(1, round(max(h, w) / 500))
    overlay = out.copy()
    for s in items:
        if s.kind == "zone":
            cv2.fillPoly(overlay, [to_pixels(s.polygon, w, h)], s.colour)
    out = cv2.addWeighted(overlay, 0.25, out, 0.75, 0).astype(np.uint8)
    for s in items:
        cv2.polylines(out, [to_pixels(s.polygon, w, h)], True, s.colour, thick)
    for s in items:
        _caption(out, s, thick)
    return out


def _caption(image: Image, s: Shape, thick: int) -> None:
    h, w = image.shape[:2]
    pts = to_pixels(s.polygon, w, h).reshape(-1, 2)
    x, y = int(pts[:, 0].min()), int(pts[:, 1].min())
    scale = 0.45 * thick
    (tw, th), base = cv2.getTextSize(s.caption, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x = min(max(x, 0), max(w - tw - 4, 0))
    y = min(max(y, th + base + 4), h - 2)
    cv2.rectangle(image, (x, y - th - base - 4), (x + tw + 4, y), s.colour, -1)
    cv2.putText(image, s.caption, (x + 2, y - base - 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), thick, cv2.LINE_AA)  # fmt: skip


def current_frame(cam: CameraConfig) -> Image:
    """One frame from the camera (a file's first frame)."""
    source = make_source(cam.model_copy(update={"realtime": False, "loop": False}))
    source.open()
    try:
        return source.read().image
    finally:
        source.close()


def draw(settings: Settings, camera: str, out: Path, image_path: Path | None = None) -> Path:
    """Write ``out`` (PNG): the camera's current frame, or ``image_path``, with its shapes."""
    cams = [c for c in settings.cameras if c.id == camera]
    if not cams:
        known = ", ".join(c.id for c in settings.cameras)
        raise ConfigError([("--camera", f"no camera {camera!r} in the config ({known})")])
    if image_path is not None:
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError([("--image", f"cannot read an image from {image_path}")])
    else:
        image = current_frame(cams[0])
    picture = render(np.asarray(image, dtype=np.uint8), shapes(cams[0]))
    if not cv2.imwrite(str(out), picture):
        raise SourceError(f"cannot write {out}")
    return out
