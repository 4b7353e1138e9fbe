"""Image -> model input, and model-input boxes -> original pixels. Pure functions.

Sizes are ``(width, height)``. A placement records how the original image was put into the
model input: ``input = original * scale + pad`` on each axis, which
:func:`boxes_to_original` inverts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


class Placement(Protocol):
    """Where an original image landed in the model input."""

    @property
    def scale_x(self) -> float: ...
    @property
    def scale_y(self) -> float: ...
    @property
    def pad_x(self) -> int: ...
    @property
    def pad_y(self) -> int: ...


@dataclass(frozen=True, slots=True)
class LetterboxInfo:
    """An aspect-preserving resize by ``scale``, then padding on the left/top by ``pad_x/y``."""

    scale: float
    pad_x: int
    pad_y: int

    @property
    def scale_x(self) -> float:
        return self.scale

    @property
    def scale_y(self) -> float:
        return self.scale


@dataclass(frozen=True, slots=True)
class StretchInfo:
    """A plain resize to the input size: each axis scaled on its own, no padding."""

    scale_x: float
    scale_y: float
    pad_x: int = 0
    pad_y: int = 0


def _check_image(image: Image) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"expected a non-empty HxWx3 uint8 image, got {image.shape} {image.dtype}")


def _resize(image: Image, width: int, height: int) -> Image:
    """Bilinear resize, as the supported families' reference pipelines do."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(resized, dtype=np.uint8)


def letterbox(
    image: Image, size: tuple[int, int], pad_value: int, center: bool = False
) -> tuple[Image, LetterboxInfo]:
    """Resize keeping the aspect ratio to fit ``size`` (w, h) and pad the rest with ``pad_value``.

    ``center=False`` puts the image in the top-left corner (YOLOX); ``center=True`` splits the
    padding evenly, the extra pixel going right/bottom (Ultralytics, NanoDet).
    """
    _check_image(image)
    width, height = size
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w = min(width, max(1, round(w * scale)))
    new_h = min(height, max(1, round(h * scale)))
    pad_x = (width - new_w) // 2 if center else 0
    pad_y = (height - new_h) // 2 if center else 0
    out = np.full((height, width, 3), pad_value, dtype=np.uint8)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = _resize(image, new_w, new_h)
    return out, LetterboxInfo(scale=scale, pad_x=pad_x, pad_y=pad_y)


def stretch(image: Image, size: tuple[int, int]) -> tuple[Image, StretchInfo]:
    """Resize to ``size`` (w, h) ignoring the aspect ratio (PicoDet)."""
    _check_image(image)
    width, height = size
    h, w = image.shape[:2]
    return _resize(image, width, height), StretchInfo(scale_x=width / w, scale_y=height / h)


def to_blob(image: Image, mean: Sequence[float], std: Sequence[float], rgb: bool) -> FloatArray:
    """HxWx3 uint8 BGR -> float32 ``[1, 3, H, W]`` of ``(pixel - mean) / std``.

    ``mean`` and ``std`` are given in the channel order the model takes (RGB if ``rgb``).
    """
    _check_image(image)
    pixels = image[:, :, ::-1] if rgb else image
    chw: FloatArray = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    chw -= np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    chw *= (1.0 / np.asarray(std, dtype=np.float32)).reshape(3, 1, 1)
    return chw[np.newaxis]


def boxes_to_original(
    boxes: FloatArray, placement: Placement, image_size: tuple[int, int]
) -> FloatArray:
    """Map ``[N, 4]`` xyxy boxes from model-input pixels back to the original image, clipped.

    ``image_size`` is the original ``(width, height)``.
    """
    width, height = image_size
    offset = np.array([placement.pad_x, placement.pad_y] * 2, dtype=np.float32)
    scale = np.array([placement.scale_x, placement.scale_y] * 2, dtype=np.float32)
    out = (boxes.astype(np.float32).reshape(-1, 4) - offset) / scale
    np.clip(out[:, 0::2], 0.0, float(width), out=out[:, 0::2])
    np.clip(out[:, 1::2], 0.0, float(height), out=out[:, 1::2])
    return out
