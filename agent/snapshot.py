"""Render an event's snapshot: the best frame, its box drawn, scaled and JPEG-encoded."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from agent.domain import SnapshotRequest
from agent.errors import AgentError

_GREEN = (0, 200, 0)


def draw_box(
    image: npt.NDArray[np.uint8], box: tuple[float, float, float, float], text: str
) -> npt.NDArray[np.uint8]:
    """A copy of ``image`` with ``box`` and its caption drawn."""
    out: npt.NDArray[np.uint8] = image.copy()
    x1, y1, x2, y2 = (round(v) for v in box)
    thick = max(1, round(max(out.shape[:2]) / 400))
    cv2.rectangle(out, (x1, y1), (x2, y2), _GREEN, thick)
    scale = 0.4 * thick
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    ty = max(y1, th + base + 2)
    cv2.rectangle(out, (x1, ty - th - base - 2), (x1 + tw + 2, ty), _GREEN, -1)
    cv2.putText(out, text, (x1 + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick)
    return out


def fit_width(image: npt.NDArray[np.uint8], max_width: int) -> npt.NDArray[np.uint8]:
    """Scale ``image`` down (never up) to at most ``max_width`` pixels wide."""
    h, w = image.shape[:2]
    if w <= max_width:
        return image
    size = (max_width, max(1, round(h * max_width / w)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def encode_jpeg(image: npt.NDArray[np.uint8], quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise AgentError("JPEG encoding failed")
    return bytes(buf.tobytes())


def render(request: SnapshotRequest, *, max_width: int, quality: int) -> bytes:
    """The JPEG bytes of the snapshot ``request`` asks for."""
    caption = f"{request.label} {request.score:.2f}"
    drawn = draw_box(request.frame.image, request.box, caption)
    return encode_jpeg(fit_width(drawn, max_width), quality)
