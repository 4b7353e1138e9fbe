"""Render an event's snapshot: the best frame, its box drawn, scaled and JPEG-encoded.

The event builder does not hold whole frames while a visit lasts: it keeps each track's best
view as a :class:`KeptView`, the frame already scaled to the snapshot width and JPEG-encoded
(tens of KB instead of 6 MB for a 1080p frame), and turns it back into a (small) frame only
when a snapshot is due.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from agent.domain import BoxPx, Frame, SnapshotRequest
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


@dataclass(frozen=True, slots=True)
class KeptView:
    """A frame kept for a later snapshot: scaled to at most ``max_width``, JPEG-encoded.

    ``scale`` is kept pixels per frame pixel; :meth:`box` maps a frame box onto the view.
    """

    camera_id: str
    index: int
    ts: float
    wall_ts: float
    scale: float
    jpeg: bytes = field(repr=False)

    @classmethod
    def of(cls, frame: Frame, *, max_width: int, quality: int) -> KeptView:
        small = fit_width(frame.image, max_width)
        scale = small.shape[1] / frame.width
        jpeg = encode_jpeg(small, quality)
        return cls(frame.camera_id, frame.index, frame.ts, frame.wall_ts, scale, jpeg)

    @property
    def nbytes(self) -> int:
        return len(self.jpeg)

    def frame(self) -> Frame:
        """The kept view decoded, as a frame with the original's identity and times."""
        image = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise AgentError("cannot decode a kept snapshot view")
        pixels = np.asarray(image, dtype=np.uint8)
        return Frame(self.camera_id, self.index, self.ts, self.wall_ts, pixels)

    def box(self, box: BoxPx) -> BoxPx:
        """``box`` (frame pixels) in the view's pixels."""
        s = self.scale
        return (box[0] * s, box[1] * s, box[2] * s, box[3] * s)


def render(request: SnapshotRequest, *, max_width: int, quality: int) -> bytes:
    """The JPEG bytes of the snapshot ``request`` asks for."""
    caption = f"{request.label} {request.score:.2f}"
    drawn = draw_box(request.frame.image, request.box, caption)
    return encode_jpeg(fit_width(drawn, max_width), quality)
