"""Model families: how each one wants its input and how its output decodes; auto-detection.

Auto-detection looks only at the graph's shapes (input ``[1, 3, H, W]`` must be static).
With ``cells(strides) = sum(ceil(W/s) * ceil(H/s))`` over the strides:

* one output ``[1, N, 5 + C]`` with ``N == cells(8, 16, 32)`` -> ``yolox`` (one prediction per
  grid cell, grid-relative values);
* one output ``[1, N, 5 + C]`` with ``N == 3 * cells(8, 16, 32)`` (or ``(8, 16, 32, 64)``, P6)
  -> ``yolov5`` (three anchors per cell, decoded to input pixels by the graph);
* one output ``[1, 4 + C, N]`` with ``N == cells(8, 16, 32)`` -> ``yolov8`` (also YOLO11);
* ``2k`` outputs ``[1, N_i, D]``: ``k`` class maps then ``k`` distance maps (``D`` a multiple
  of 4) with ``N_i == cells(8 * 2**i)`` -> a GFL head: ``nanodet`` when ``k == 3``,
  ``picodet`` when ``k == 4``.

Anything else, or a layout matching two rules, is a :class:`ModelError`; ``family`` in the
config then names the family and skips detection.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from agent.errors import ModelError
from agent.vision.detector.decode import (
    Decoded,
    decode_gfl,
    decode_yolov5,
    decode_yolov8,
    decode_yolox,
    empty_decoded,
)
from agent.vision.detector.preprocess import Image, Placement, letterbox_blob, stretch_blob

FamilyName = Literal["yolox", "picodet", "nanodet", "yolov5", "yolov8"]
FAMILIES: tuple[FamilyName, ...] = get_args(FamilyName)
Dim = int | str | None
Shape = Sequence[Dim]
Outputs = Sequence[npt.NDArray[np.floating]]
Size = tuple[int, int]


class Resize(enum.Enum):
    LETTERBOX = "letterbox"
    STRETCH = "stretch"


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """Everything family-specific: input preparation and output decoding.

    ``mean``/``std`` are in the channel order the model takes (RGB when ``rgb``).
    ``center_offset`` places GFL anchor points at ``(cell + offset) * stride``.
    """

    name: FamilyName
    rgb: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Resize
    pad_value: int
    center_pad: bool
    strides: tuple[int, ...]
    center_offset: float
    decoder: Callable[[FamilySpec, Outputs, Size, float], Decoded]

    def preprocess(
        self, image: Image, size: Size, out: npt.NDArray[np.float32] | None = None
    ) -> tuple[npt.NDArray[np.float32], Placement]:
        """BGR uint8 image -> float32 NCHW blob and where the image landed in it.

        The blob is written into ``out`` (C-contiguous float32 ``[1, 3, h, w]``) when given.
        """
        if self.resize is Resize.STRETCH:
            return stretch_blob(image, size, mean=self.mean, std=self.std, rgb=self.rgb, out=out)
        return letterbox_blob(
            image, size, pad_value=self.pad_value, center=self.center_pad,
            mean=self.mean, std=self.std, rgb=self.rgb, out=out,
        )  # fmt: skip

    def decode(self, outputs: Outputs, size: Size, score_threshold: float) -> Decoded:
        """Model outputs (in graph order) -> boxes in input pixels, scores, class ids."""
        return self.decoder(self, outputs, size, score_threshold)


# The adapters below skip work a decoder would do for nothing, with the same result: they only
# take shortcuts on outputs of the expected float32 layout, so that anything else still reaches
# the decoder and its error message.


def _rows(out: npt.NDArray[np.floating], count: int) -> npt.NDArray[np.float32] | None:
    """A float32 ``[1, count, D]`` or ``[count, D]`` output as a ``[count, D]`` view, or None."""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        return None
    arr = out[0] if out.ndim == 3 and out.shape[0] == 1 else out
    if arr.ndim != 2 or arr.shape[0] != count or arr.shape[1] == 0:
        return None
    return arr


def _decode_yolox(spec: FamilySpec, outputs: Outputs, size: Size, threshold: float) -> Decoded:
    arr = _rows(outputs[0], cells(size, spec.strides))
    if arr is not None and arr.shape[1] >= 6 and arr[:, 4].max() < threshold:
        return empty_decoded()  # no objectness passes, so no grid needed (a NaN max is not below)
    return decode_yolox(outputs[0], size, spec.strides, threshold)


def _decode_yolov5(_spec: FamilySpec, outputs: Outputs, _size: Size, threshold: float) -> Decoded:
    return decode_yolov5(outputs[0], threshold)


def _decode_yolov8(_spec: FamilySpec, outputs: Outputs, _size: Size, threshold: float) -> Decoded:
    """Decodes only the columns whose best class score passes (found on the contiguous
    ``[C, N]`` class block, far cheaper than the decoder's per-row argmax over all ``N``)."""
    out = outputs[0]
    arr = out[0] if isinstance(out, np.ndarray) and out.ndim == 3 and out.shape[0] == 1 else None
    if arr is not None and arr.dtype == np.float32 and arr.shape[0] >= 5 and arr.shape[1] > 0:
        out = out[:, :, np.flatnonzero(arr[4:].max(axis=0) >= threshold)]
    return decode_yolov8(out, threshold)


def _gfl_level_empty(
    cls_map: npt.NDArray[np.floating],
    dist_map: npt.NDArray[np.floating],
    n_cells: int,
    dist_width: int,
    threshold: float,
) -> bool:
    """True for a well-formed level whose every class score is below ``threshold``."""
    cls, dist = _rows(cls_map, n_cells), _rows(dist_map, n_cells)
    if cls is None or dist is None or dist.shape[1] != dist_width:
        return False
    return bool(cls.max() < threshold)  # a NaN max is not below: decoded as usual


def _decode_gfl(spec: FamilySpec, outputs: Outputs, size: Size, threshold: float) -> Decoded:
    """Levels where no class score passes are left out: they would decode to nothing."""
    levels = len(outputs) // 2
    cls_maps, dist_maps = outputs[:levels], outputs[levels:]
    reg_max = int(np.shape(dist_maps[0])[-1]) // 4 - 1
    strides = spec.strides[:levels]
    if len(outputs) == 2 * len(strides):
        width = 4 * (reg_max + 1)
        live = [
            i
            for i, stride in enumerate(strides)
            if not _gfl_level_empty(
                cls_maps[i], dist_maps[i], cells(size, [stride]), width, threshold
            )
        ]
        if not live:
            return empty_decoded()
        cls_maps = [cls_maps[i] for i in live]
        dist_maps = [dist_maps[i] for i in live]
        strides = tuple(strides[i] for i in live)
    return decode_gfl(
        cls_maps,
        dist_maps,
        size,
        strides,
        reg_max=reg_max,
        score_threshold=threshold,
        center_offset=spec.center_offset,
    )


_ZERO = (0.0, 0.0, 0.0)
_ONE = (1.0, 1.0, 1.0)
_255 = (255.0, 255.0, 255.0)


def _ultralytics(name: FamilyName, decoder: Callable[..., Decoded]) -> FamilySpec:
    """Ultralytics exports: RGB / 255, centred letterbox padded with 114."""
    return FamilySpec(
        name=name, rgb=True, mean=_ZERO, std=_255, resize=Resize.LETTERBOX, pad_value=114,
        center_pad=True, strides=(8, 16, 32), center_offset=0.0, decoder=decoder,
    )  # fmt: skip


SPECS: Mapping[FamilyName, FamilySpec] = MappingProxyType(
    {
        "yolox": FamilySpec(
            name="yolox", rgb=False, mean=_ZERO, std=_ONE, resize=Resize.LETTERBOX,
            pad_value=114, center_pad=False, strides=(8, 16, 32), center_offset=0.0,
            decoder=_decode_yolox,
        ),
        "picodet": FamilySpec(
            name="picodet", rgb=True, mean=(123.675, 116.28, 103.53),
            std=(58.395, 57.12, 57.375), resize=Resize.STRETCH, pad_value=0, center_pad=False,
            strides=(8, 16, 32, 64), center_offset=0.5, decoder=_decode_gfl,
        ),
        "nanodet": FamilySpec(
            name="nanodet", rgb=False, mean=(103.53, 116.28, 123.675),
            std=(57.375, 57.12, 58.395), resize=Resize.LETTERBOX, pad_value=0, center_pad=True,
            strides=(8, 16, 32), center_offset=0.5, decoder=_decode_gfl,
        ),
        "yolov5": _ultralytics("yolov5", _decode_yolov5),
        "yolov8": _ultralytics("yolov8", _decode_yolov8),
    }
)  # fmt: skip
"""The spec of every family, by name (read-only)."""


def input_size_of(input_shape: Shape, model: str) -> Size:
    """``(width, height)`` of a static ``[1, 3, H, W]`` input, else :class:`ModelError`."""
    dims = list(input_shape)
    ok = len(dims) == 4 and dims[1] == 3 and dims[0] != 0
    ok = ok and all(isinstance(d, int) and d > 0 for d in dims[2:])
    if not ok:
        raise ModelError(
            f"unsupported model input {dims} in {model}: expected [1, 3, H, W] with a fixed "
            "H and W (export with a fixed image size)"
        )
    return int(dims[3]), int(dims[2])  # type: ignore[arg-type]


def cells(size: Size, strides: Sequence[int]) -> int:
    """Number of grid cells over ``strides`` for an input of ``size``."""
    width, height = size
    return sum(-(-width // s) * -(-height // s) for s in strides)


def _static(shapes: Sequence[Shape]) -> list[tuple[int, ...]] | None:
    """The output shapes as int tuples, or None when one has a dynamic dimension."""
    out = []
    for shape in shapes:
        if not all(isinstance(d, int) for d in shape):
            return None
        out.append(tuple(int(d) for d in shape))  # type: ignore[arg-type]
    return out


def _single_output_family(size: Size, shape: tuple[int, ...]) -> list[FamilyName]:
    if len(shape) != 3 or shape[0] != 1:
        return []
    _, a, b = shape
    found: list[FamilyName] = []
    if b >= 6 and a == cells(size, (8, 16, 32)):
        found.append("yolox")
    if b >= 6 and a in (3 * cells(size, (8, 16, 32)), 3 * cells(size, (8, 16, 32, 64))):
        found.append("yolov5")
    if a >= 5 and b == cells(size, (8, 16, 32)):
        found.append("yolov8")
    return found


def _gfl_family(size: Size, shapes: list[tuple[int, ...]]) -> list[FamilyName]:
    levels = len(shapes) // 2
    if len(shapes) % 2 or levels not in (3, 4):
        return []
    if any(len(s) != 3 or s[0] != 1 for s in shapes):
        return []
    cls, dist = shapes[:levels], shapes[levels:]
    strides = [8 * 2**i for i in range(levels)]
    same_n = all(
        c[1] == d[1] == cells(size, [s]) for c, d, s in zip(cls, dist, strides, strict=True)
    )
    same_d = len({c[2] for c in cls}) == 1 and len({d[2] for d in dist}) == 1
    if not (same_n and same_d and dist[0][2] % 4 == 0 and dist[0][2] >= 8):
        return []
    return ["nanodet" if levels == 3 else "picodet"]


def detect_family(
    input_shape: Shape,
    output_names: Sequence[str],
    output_shapes: Sequence[Shape],
    model: str = "model",
) -> FamilyName:
    """The family of a graph from its input and output shapes (rules in the module docstring).

    ``output_names`` only improve the error message. ``model`` names the file in errors.
    """
    size = input_size_of(input_shape, model)
    shapes = _static(output_shapes)
    found: list[FamilyName] = []
    if shapes is not None and len(shapes) == 1:
        found = _single_output_family(size, shapes[0])
    elif shapes is not None:
        found = _gfl_family(size, shapes)
    if len(found) == 1:
        return found[0]
    layout = ", ".join(f"{n} {list(s)}" for n, s in zip(output_names, output_shapes, strict=False))
    why = "matches several families" if found else "is not a known family layout"
    raise ModelError(
        f"cannot detect the model family of {model}: input {list(input_shape)}, outputs "
        f"[{layout}] {why}; set detector.family to one of {', '.join(FAMILIES)}"
    )


def check_layout(family: FamilyName, n_outputs: int, model: str) -> None:
    """A cheap check that a configured ``family`` can decode a graph with ``n_outputs``."""
    gfl = family in ("nanodet", "picodet")
    levels = len(SPECS[family].strides)
    ok = n_outputs == 2 * levels if gfl else n_outputs == 1
    if not ok:
        want = f"{2 * levels} outputs" if gfl else "1 output"
        raise ModelError(f"{model} has {n_outputs} outputs; family {family} needs {want}")


def class_count(family: FamilyName, output_shapes: Sequence[Shape]) -> int | None:
    """Number of classes the outputs carry for ``family``, or None if a dimension is dynamic."""
    shapes = _static(output_shapes)
    if not shapes or any(len(s) != 3 for s in shapes):
        return None
    if family in ("yolox", "yolov5"):
        return shapes[0][2] - 5
    if family == "yolov8":
        return shapes[0][1] - 4
    return shapes[0][2]
