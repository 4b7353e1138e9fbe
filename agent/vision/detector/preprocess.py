"""Image -> model input, and model-input boxes -> original pixels. Pure functions.

Sizes are ``(width, height)``. A placement records how the original image was put into the
model input: ``input = original * scale + pad`` on each axis, which
:func:`boxes_to_original` inverts.

:func:`letterbox_blob` and :func:`stretch_blob` are what the detector runs: the same float32
blob, bit for bit, as :func:`to_blob` of :func:`letterbox` / :func:`stretch`, without the
padded uint8 canvas (the resized image is normalised straight into its place in the blob,
through a 256-entry table per channel). Every function that makes an array can write it into
a caller's ``out`` array instead.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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


def _check_out(out: npt.NDArray[Any], shape: tuple[int, ...], dtype: type[np.generic]) -> None:
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous {np.dtype(dtype).name} array of shape {shape}, "
            f"got {out.shape} {out.dtype}"
        )


def _written(result: npt.NDArray[Any], dst: npt.NDArray[Any]) -> None:
    """Make sure an OpenCV call given ``dst=`` wrote there (it returns ``dst`` itself if so)."""
    if result is not dst:
        np.copyto(dst, result)


def _resize_into(image: Image, dst: Image) -> None:
    """Bilinear resize of ``image`` to the size of ``dst``, written into ``dst`` (may be a view).

    Bilinear is what the supported families' reference pipelines use.
    """
    if image.shape == dst.shape:
        np.copyto(dst, image)
        return
    height, width = dst.shape[:2]
    _written(cv2.resize(image, (width, height), dst=dst, interpolation=cv2.INTER_LINEAR), dst)


def _resize(image: Image, width: int, height: int) -> Image:
    """``image`` at ``(width, height)``: itself if it already is, else a bilinear resize."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    out = np.empty((height, width, 3), np.uint8)
    _resize_into(image, out)
    return out


@dataclass(frozen=True, slots=True)
class _Fit:
    """Where a letterboxed image goes in the input: ``new_w x new_h`` at ``(pad_x, pad_y)``."""

    info: LetterboxInfo
    new_w: int
    new_h: int


def _fit(image: Image, size: tuple[int, int], center: bool) -> _Fit:
    width, height = size
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w = min(width, max(1, round(w * scale)))
    new_h = min(height, max(1, round(h * scale)))
    pad_x = (width - new_w) // 2 if center else 0
    pad_y = (height - new_h) // 2 if center else 0
    return _Fit(LetterboxInfo(scale=scale, pad_x=pad_x, pad_y=pad_y), new_w, new_h)


def _check_pad(pad_value: int) -> None:
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be a uint8 value (0..255), got {pad_value}")


def _border(fit: _Fit, size: tuple[int, int]) -> list[tuple[slice, slice]]:
    """The non-empty (rows, columns) strips of a ``size`` input outside the image's rectangle."""
    width, height = size
    x0, y0 = fit.info.pad_x, fit.info.pad_y
    x1, y1 = x0 + fit.new_w, y0 + fit.new_h
    strips = [
        (slice(0, y0), slice(0, width)),
        (slice(y1, height), slice(0, width)),
        (slice(y0, y1), slice(0, x0)),
        (slice(y0, y1), slice(x1, width)),
    ]
    return [(r, c) for r, c in strips if r.stop > r.start and c.stop > c.start]


def letterbox(
    image: Image,
    size: tuple[int, int],
    pad_value: int,
    center: bool = False,
    out: Image | None = None,
) -> tuple[Image, LetterboxInfo]:
    """Resize keeping the aspect ratio to fit ``size`` (w, h) and pad the rest with ``pad_value``.

    ``center=False`` puts the image in the top-left corner (YOLOX); ``center=True`` splits the
    padding evenly, the extra pixel going right/bottom (Ultralytics, NanoDet). The result is
    written into ``out`` (uint8 ``[h, w, 3]``) when given, else into a new array.
    """
    _check_image(image)
    _check_pad(pad_value)
    width, height = size
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    _check_out(out, (height, width, 3), np.uint8)
    fit = _fit(image, size, center)
    for rows, cols in _border(fit, size):
        out[rows, cols] = pad_value
    x0, y0 = fit.info.pad_x, fit.info.pad_y
    _resize_into(image, out[y0 : y0 + fit.new_h, x0 : x0 + fit.new_w])
    return out, fit.info


def stretch(
    image: Image, size: tuple[int, int], out: Image | None = None
) -> tuple[Image, StretchInfo]:
    """Resize to ``size`` (w, h) ignoring the aspect ratio (PicoDet).

    Without ``out`` the image itself is returned when it already has that size.
    """
    _check_image(image)
    width, height = size
    h, w = image.shape[:2]
    info = StretchInfo(scale_x=width / w, scale_y=height / h)
    if out is None:
        return _resize(image, width, height), info
    _check_out(out, (height, width, 3), np.uint8)
    _resize_into(image, out)
    return out, info


@dataclass(frozen=True, slots=True)
class _Channel:
    """How one model channel is made: from BGR channel ``source`` through ``table``.

    A table entry is ``(pixel - mean) * (1 / std)`` in float32, exactly as numpy computes it
    on a whole image, so a lookup gives bit-identical values. ``identity`` when the table is
    the pixel value itself (mean 0, std 1): a plain conversion, faster than a lookup.
    """

    source: int
    table: FloatArray
    identity: bool


@functools.lru_cache(maxsize=64)
def _channels(
    mean: tuple[float, ...], std: tuple[float, ...], rgb: bool
) -> tuple[_Channel, _Channel, _Channel]:
    """The three model channels for ``mean``/``std`` (model order) and the BGR -> model order."""
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean32.shape != (3,) or std32.shape != (3,):
        raise ValueError(f"mean and std need 3 values each, got {mean} and {std}")
    inv = np.float32(1.0) / std32
    pixels = np.arange(256, dtype=np.float32)
    channels = []
    for c in range(3):
        table = (pixels - mean32[c]) * inv[c]
        table.flags.writeable = False
        source = 2 - c if rgb else c
        channels.append(_Channel(source, table, bool(np.array_equal(table, pixels))))
    return channels[0], channels[1], channels[2]


def _channels_of(
    mean: Sequence[float], std: Sequence[float], rgb: bool
) -> tuple[_Channel, _Channel, _Channel]:
    return _channels(tuple(map(float, mean)), tuple(map(float, std)), bool(rgb))


def _normalise_into(image: Image, channels: Sequence[_Channel], planes: FloatArray) -> None:
    """``image`` (HxWx3 BGR) normalised into ``planes`` (float32 ``[3, H, W]``, may be a view).

    One pass per channel over contiguous planes (``cv2.split`` first): a lookup, or a plain
    uint8 -> float32 conversion for identity channels.
    """
    bgr = cv2.split(image)
    for channel, dst in zip(channels, planes, strict=True):
        if channel.identity:
            np.copyto(dst, bgr[channel.source], casting="safe")
        else:
            _written(cv2.LUT(bgr[channel.source], channel.table, dst=dst), dst)


def _blob_out(out: FloatArray | None, size: tuple[int, int]) -> FloatArray:
    width, height = size
    if out is None:
        return np.empty((1, 3, height, width), np.float32)
    _check_out(out, (1, 3, height, width), np.float32)
    return out


def to_blob(
    image: Image,
    mean: Sequence[float],
    std: Sequence[float],
    rgb: bool,
    out: FloatArray | None = None,
) -> FloatArray:
    """HxWx3 uint8 BGR -> float32 ``[1, 3, H, W]`` of ``(pixel - mean) / std``.

    ``mean`` and ``std`` are given in the channel order the model takes (RGB if ``rgb``).
    The result is written into ``out`` (C-contiguous float32 ``[1, 3, H, W]``) when given.
    """
    _check_image(image)
    height, width = image.shape[:2]
    blob = _blob_out(out, (width, height))
    _normalise_into(image, _channels_of(mean, std, rgb), blob[0])
    return blob


def letterbox_blob(
    image: Image,
    size: tuple[int, int],
    *,
    pad_value: int,
    center: bool,
    mean: Sequence[float],
    std: Sequence[float],
    rgb: bool,
    out: FloatArray | None = None,
) -> tuple[FloatArray, LetterboxInfo]:
    """``to_blob(letterbox(image, size, pad_value, center)[0], mean, std, rgb)`` in one go.

    The same values, bit for bit, without the padded uint8 canvas: the resized image is
    normalised straight into its place in the blob and the border is filled with the
    normalised ``pad_value``. Written into ``out`` (float32 ``[1, 3, h, w]``) when given.
    """
    _check_image(image)
    _check_pad(pad_value)
    blob = _blob_out(out, size)
    fit = _fit(image, size, center)
    x0, y0 = fit.info.pad_x, fit.info.pad_y
    channels = _channels_of(mean, std, rgb)
    pad = np.array([[[channel.table[pad_value]]] for channel in channels], np.float32)
    for rows, cols in _border(fit, size):
        blob[0, :, rows, cols] = pad  # [3, 1, 1]: each channel's normalised pad value
    resized = _resize(image, fit.new_w, fit.new_h)
    _normalise_into(resized, channels, blob[0, :, y0 : y0 + fit.new_h, x0 : x0 + fit.new_w])
    return blob, fit.info


def stretch_blob(
    image: Image,
    size: tuple[int, int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    rgb: bool,
    out: FloatArray | None = None,
) -> tuple[FloatArray, StretchInfo]:
    """``to_blob(stretch(image, size)[0], mean, std, rgb)``, written into ``out`` if given."""
    resized, info = stretch(image, size)
    return to_blob(resized, mean, std, rgb, out), info


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
