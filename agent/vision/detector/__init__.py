"""Object detection: an ONNX model of a known family behind the small :class:`Detector` API.

``preprocess`` and ``decode`` are pure numpy functions, ``families`` knows each model family
and detects it from the graph, ``session`` runs onnxruntime.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from agent.config import DetectorConfig
from agent.domain import Detections
from agent.vision.detector.session import OnnxDetector


@runtime_checkable
class Detector(Protocol):
    """Finds objects in one BGR frame."""

    @property
    def family(self) -> str:
        """The model family, e.g. ``yolox``."""
        ...

    @property
    def input_size(self) -> tuple[int, int]:
        """The model input ``(width, height)``."""
        ...

    def detect(self, image: npt.NDArray[np.uint8]) -> Detections:
        """Detections in a HxWx3 uint8 BGR image, boxes in its pixels."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


def load_detector(cfg: DetectorConfig) -> OnnxDetector:
    """The detector ``cfg`` describes; :class:`~agent.errors.ModelError` if it cannot load."""
    return OnnxDetector.from_config(cfg)


__all__ = ["Detector", "OnnxDetector", "load_detector"]
