"""Draw detections on a copy of a frame (for the CLI and debugging)."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from agent.domain import Detections

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class id."""
    hue = (class_id * 47) % 180
    hsv = np.array([[[hue, 220, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_detections(
    image: npt.NDArray[np.uint8], detections: Detections, thickness: int = 2
) -> npt.NDArray[np.uint8]:
    """A copy of ``image`` with a box and a ``label score`` tag per detection."""
    out: npt.NDArray[np.uint8] = np.array(image, dtype=np.uint8, copy=True, order="C")
    scale = max(0.4, min(out.shape[:2]) / 1000)
    for i in range(len(detections)):
        x1, y1, x2, y2 = (round(float(v)) for v in detections.xyxy[i])
        color = class_color(int(detections.class_ids[i]))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        text = f"{detections.label(i)} {float(detections.scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
        top = max(y1 - th - base, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw, top + th + base), color, cv2.FILLED)
        cv2.putText(out, text, (x1, top + th), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
