"""Unit tests of the pure detector functions: preprocess, decoders, NMS, family detection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.errors import ModelError
from agent.vision.detector.decode import (
    decode_gfl,
    decode_yolov5,
    decode_yolov8,
    decode_yolox,
    grid_points,
    nms,
)
from agent.vision.detector.families import SPECS, check_layout, detect_family, input_size_of
from agent.vision.detector.preprocess import (
    LetterboxInfo,
    StretchInfo,
    boxes_to_original,
    letterbox,
    letterbox_blob,
    stretch,
    stretch_blob,
    to_blob,
)

# --- preprocess -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "size", "center", "scale", "pad", "content"),
    [
        ((1080, 810), (416, 416), False, 416 / 1080, (0, 0), (312, 416)),
        ((480, 640), (320, 320), True, 0.5, (0, 40), (320, 240)),
        ((480, 640), (320, 320), False, 0.5, (0, 0), (320, 240)),
        ((720, 1280), (640, 640), True, 0.5, (0, 140), (640, 360)),
        ((100, 50), (320, 320), True, 3.2, (80, 0), (160, 320)),
        ((333, 500), (320, 320), True, 0.64, (0, 53), (320, 213)),
        ((320, 320), (320, 320), True, 1.0, (0, 0), (320, 320)),
        ((240, 320), (640, 384), True, 1.6, (64, 0), (512, 384)),
    ],
)
def test_letterbox_scale_pad_and_content(hw, size, center, scale, pad, content):
    image = np.full((*hw, 3), 200, np.uint8)
    out, info = letterbox(image, size, pad_value=114, center=center)
    assert out.shape == (size[1], size[0], 3)
    assert out.dtype == np.uint8
    assert info == LetterboxInfo(scale=pytest.approx(scale), pad_x=pad[0], pad_y=pad[1])
    filled = np.argwhere((out == 200).all(axis=2))
    (y0, x0), (y1, x1) = filled.min(axis=0), filled.max(axis=0)
    assert (x0, y0) == pad
    assert (x1 - x0 + 1, y1 - y0 + 1) == content
    assert (out == 200).all(axis=2).sum() == content[0] * content[1]
    assert ((out == 114).all(axis=2) | (out == 200).all(axis=2)).all()


@pytest.mark.parametrize(
    ("hw", "size", "center"),
    [((1080, 810), (416, 416), False), ((480, 640), (320, 320), True), ((100, 50), (64, 64), True)],
)
def test_letterbox_inverse_round_trip(hw, size, center):
    height, width = hw
    _, info = letterbox(np.zeros((*hw, 3), np.uint8), size, 0, center)
    original = np.array([[0, 0, width, height], [10.5, 20.25, 40.0, 60.75]], np.float32)
    in_input = original * info.scale + np.array([info.pad_x, info.pad_y] * 2, np.float32)
    back = boxes_to_original(in_input, info, (width, height))
    np.testing.assert_allclose(back, original, atol=1e-3)


def test_letterbox_keeps_pixels_in_place():
    image = np.zeros((2, 4, 3), np.uint8)
    image[0, 0] = (1, 2, 3)
    out, info = letterbox(image, (8, 8), pad_value=114, center=True)
    assert info == LetterboxInfo(2.0, 0, 2)
    assert out[2, 0].tolist() == [1, 2, 3]
    assert out[0, 0].tolist() == [114, 114, 114]


def test_stretch_scales_each_axis():
    out, info = stretch(np.zeros((480, 640, 3), np.uint8), (320, 320))
    assert out.shape == (320, 320, 3)
    assert info == StretchInfo(scale_x=0.5, scale_y=pytest.approx(2 / 3))
    back = boxes_to_original(np.array([[32, 32, 160, 320]], np.float32), info, (640, 480))
    np.testing.assert_allclose(back, [[64, 48, 320, 480]], atol=1e-3)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([-10, -20, 50, 30], [0, 0, 50, 30]),
        ([-10, -20, 50, 60], [0, 0, 50, 50]),
        ([90, 40, 130, 80], [90, 40, 100, 50]),
        ([5, 6, 7, 8], [5, 6, 7, 8]),
    ],
)
def test_boxes_to_original_clips_to_image(box, expected):
    out = boxes_to_original(np.array([box], np.float32), LetterboxInfo(1.0, 0, 0), (100, 50))
    assert out.dtype == np.float32
    assert out.tolist() == [expected]


@pytest.mark.parametrize(
    ("rgb", "mean", "std", "expected"),
    [
        (False, (0, 0, 0), (1, 1, 1), [[[10, 40]], [[20, 50]], [[30, 60]]]),
        (True, (0, 0, 0), (1, 1, 1), [[[30, 60]], [[20, 50]], [[10, 40]]]),
        (True, (10, 20, 30), (10, 10, 10), [[[2, 5]], [[0, 3]], [[-2, 1]]]),
        (False, (0, 0, 0), (255, 255, 255), np.array([[[10, 40]], [[20, 50]], [[30, 60]]]) / 255),
    ],
)
def test_to_blob_layout_order_and_normalisation(rgb, mean, std, expected):
    image = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)  # 1x2 BGR
    blob = to_blob(image, mean, std, rgb)
    assert blob.shape == (1, 3, 1, 2)
    assert blob.dtype == np.float32
    assert blob.flags.c_contiguous
    np.testing.assert_allclose(blob[0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)],
)
def test_preprocess_rejects_non_images(bad):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox(bad, (32, 32), 114)
    for spec in SPECS.values():
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            spec.preprocess(bad, (32, 32))


_NORMS = [  # (mean, std, rgb) of each family: YOLOX, PicoDet, NanoDet, Ultralytics
    ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),
    ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), True),
    ((103.53, 116.28, 123.675), (57.375, 57.12, 58.395), False),
    ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0), True),
]


def _noise(height: int, width: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("norm", _NORMS)
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize(
    ("hw", "size"),
    [
        ((432, 768), (416, 416)),
        ((1080, 1920), (320, 320)),
        ((1080, 810), (416, 416)),
        ((100, 50), (320, 320)),
        ((320, 320), (320, 320)),
        ((240, 320), (640, 384)),
        ((1, 7), (32, 32)),
    ],
)
def test_letterbox_blob_is_letterbox_then_to_blob_bit_for_bit(hw, size, center, norm):
    mean, std, rgb = norm
    image = _noise(*hw)
    canvas, info = letterbox(image, size, 114, center)
    blob, got_info = letterbox_blob(
        image, size, pad_value=114, center=center, mean=mean, std=std, rgb=rgb
    )
    assert got_info == info
    assert blob.shape == (1, 3, size[1], size[0])
    assert blob.dtype == np.float32
    assert blob.flags.c_contiguous
    assert np.array_equal(blob, to_blob(canvas, mean, std, rgb))


@pytest.mark.parametrize("norm", _NORMS)
@pytest.mark.parametrize(("hw", "size"), [((432, 768), (320, 320)), ((320, 320), (320, 320))])
def test_stretch_blob_is_stretch_then_to_blob(hw, size, norm):
    mean, std, rgb = norm
    image = _noise(*hw)
    resized, info = stretch(image, size)
    blob, got_info = stretch_blob(image, size, mean=mean, std=std, rgb=rgb)
    assert got_info == info
    assert np.array_equal(blob, to_blob(resized, mean, std, rgb))


@pytest.mark.parametrize("norm", _NORMS)
def test_to_blob_matches_plain_numpy(norm):
    mean, std, rgb = norm
    image = _noise(37, 53)
    pixels = (image[:, :, ::-1] if rgb else image).transpose(2, 0, 1).astype(np.float32)
    expected = (pixels - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None]
    np.testing.assert_allclose(to_blob(image, mean, std, rgb)[0], expected, rtol=1e-6, atol=1e-6)


def test_preprocess_of_a_strided_view_is_that_of_a_copy():
    image = _noise(400, 700)[::2, 1::3]  # not contiguous
    assert not image.flags.c_contiguous
    for name, spec in SPECS.items():
        got, _ = spec.preprocess(image, (96, 64))
        want, _ = spec.preprocess(np.ascontiguousarray(image), (96, 64))
        assert np.array_equal(got, want), name


def _garbage(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.full(shape, np.nan if dtype is np.float32 else 7, dtype)


@pytest.mark.parametrize("center", [False, True])
def test_preprocess_writes_into_out(center):
    image = _noise(90, 160)
    mean, std, rgb = _NORMS[1]
    canvas = _garbage((64, 64, 3), np.uint8)
    got, info = letterbox(image, (64, 64), 114, center, out=canvas)
    assert got is canvas
    assert np.array_equal(canvas, letterbox(image, (64, 64), 114, center)[0])
    assert info.pad_y == (14 if center else 0)

    blob = _garbage((1, 3, 64, 64), np.float32)
    got, _ = letterbox_blob(
        image, (64, 64), pad_value=114, center=center, mean=mean, std=std, rgb=rgb, out=blob
    )
    assert got is blob
    assert np.array_equal(blob, to_blob(canvas, mean, std, rgb))  # the border too: no NaN left

    stretched = _garbage((64, 64, 3), np.uint8)
    assert stretch(image, (64, 64), out=stretched)[0] is stretched
    assert np.array_equal(stretched, stretch(image, (64, 64))[0])
    blob = _garbage((1, 3, 64, 64), np.float32)
    assert stretch_blob(image, (64, 64), mean=mean, std=std, rgb=rgb, out=blob)[0] is blob
    assert np.array_equal(blob, to_blob(stretched, mean, std, rgb))
    blob = _garbage((1, 3, 64, 64), np.float32)
    assert to_blob(stretched, mean, std, rgb, out=blob) is blob
    assert np.array_equal(blob, to_blob(stretched, mean, std, rgb))


def test_spec_preprocess_reuses_out_across_image_sizes():
    spec = SPECS["nanodet"]
    blob = np.empty((1, 3, 64, 64), np.float32)
    for hw in [(90, 160), (160, 90), (64, 64), (10, 300)]:
        image = _noise(*hw, seed=hw[0])
        got, placement = spec.preprocess(image, (64, 64), out=blob)
        want, want_placement = spec.preprocess(image, (64, 64))
        assert got is blob
        assert np.array_equal(blob, want), hw
        assert placement == want_placement


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 3, 64, 63), np.float32),
        np.zeros((1, 3, 64, 64), np.float64),
        np.zeros((1, 3, 64, 128), np.float32)[..., ::2],
        np.zeros((3, 64, 64), np.float32),
    ],
)
def test_preprocess_rejects_a_wrong_out(bad):
    with pytest.raises(ValueError, match="out must be"):
        letterbox_blob(
            _noise(8, 8), (64, 64), pad_value=0, center=True, mean=(0, 0, 0), std=(1, 1, 1),
            rgb=False, out=bad,
        )  # fmt: skip
    with pytest.raises(ValueError, match="out must be"):
        SPECS["picodet"].preprocess(_noise(8, 8), (64, 64), out=bad)
    with pytest.raises(ValueError, match="out must be"):
        letterbox(_noise(8, 8), (64, 64), 0, out=np.zeros((64, 64, 3), np.float32))


@pytest.mark.parametrize("pad", [-1, 256])
def test_letterbox_rejects_a_pad_value_out_of_uint8(pad):
    with pytest.raises(ValueError, match="pad_value"):
        letterbox(_noise(8, 8), (16, 16), pad)
    with pytest.raises(ValueError, match="pad_value"):
        letterbox_blob(
            _noise(8, 8), (16, 16), pad_value=pad, center=False, mean=(0, 0, 0), std=(1, 1, 1),
            rgb=False,
        )  # fmt: skip


# --- decoders ---------------------------------------------------------------------------------


def test_grid_points_order():
    grid = grid_points((32, 16), [8, 16])
    assert grid.shape == (4 * 2 + 2 * 1, 3)
    assert grid[:5].tolist() == [[0, 0, 8], [1, 0, 8], [2, 0, 8], [3, 0, 8], [0, 1, 8]]
    assert grid[8:].tolist() == [[0, 0, 16], [1, 0, 16]]


def _yolox_tensor() -> np.ndarray:
    """64x64 input, strides 8/16/32: 64 + 16 + 4 cells; two predictions."""
    out = np.zeros((1, 84, 85), np.float32)
    # stride 16, column 2, row 1 -> index 64 + 1 * 4 + 2
    out[0, 70, :5] = (0.5, 0.25, math.log(2.0), 0.0, 0.8)
    out[0, 70, 5 + 3] = 0.5  # score 0.4, class 3
    # stride 8, column 0, row 0
    out[0, 0, :5] = (0.0, 0.0, 0.0, 0.0, 0.9)
    out[0, 0, 5 + 7] = 0.2  # score 0.18, class 7
    return out


@pytest.mark.parametrize(
    ("threshold", "boxes", "scores", "classes"),
    [
        (0.3, [[24, 12, 56, 28]], [0.4], [3]),
        (0.1, [[-4, -4, 4, 4], [24, 12, 56, 28]], [0.18, 0.4], [7, 3]),
        (0.5, [], [], []),
    ],
)
def test_decode_yolox_known_cells(threshold, boxes, scores, classes):
    got_boxes, got_scores, got_classes = decode_yolox(
        _yolox_tensor(), (64, 64), (8, 16, 32), threshold
    )
    np.testing.assert_allclose(got_boxes.reshape(-1, 4), np.array(boxes).reshape(-1, 4), atol=1e-4)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-6)
    assert got_classes.tolist() == classes
    assert got_boxes.dtype == np.float32
    assert got_classes.dtype == np.int64


def test_decode_yolox_rejects_wrong_cell_count():
    with pytest.raises(ValueError, match="grid cells"):
        decode_yolox(np.zeros((1, 80, 85), np.float32), (64, 64), (8, 16, 32), 0.5)


def _gfl_maps(bins: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """32x32 input, strides 8/16: 16 + 4 cells, 2 classes, reg_max 3."""
    cls = [np.zeros((1, 16, 2), np.float32), np.zeros((1, 4, 2), np.float32)]
    dist = [np.zeros((1, 16, 4 * bins), np.float32), np.zeros((1, 4, 4 * bins), np.float32)]
    # stride 16, column 1, row 0: class 1 at 0.7; left 1 bin, top 0, right 2, bottom 1
    cls[1][0, 1, 1] = 0.7
    for side, b in enumerate((1, 0, 2, 1)):
        dist[1][0, 1, side * bins + b] = 60.0
    # stride 8, column 3, row 3: class 0 at 0.6; every side half bin 0, half bin 2 -> 1 bin
    cls[0][0, 15, 0] = 0.6
    for side in range(4):
        dist[0][0, 15, side * bins + 0] = 60.0
        dist[0][0, 15, side * bins + 2] = 60.0
    return cls, dist


@pytest.mark.parametrize(
    ("offset", "threshold", "boxes", "scores", "classes"),
    [
        (0.5, 0.65, [[8, 8, 56, 24]], [0.7], [1]),
        (0.0, 0.65, [[0, 0, 48, 16]], [0.7], [1]),
        (0.5, 0.5, [[20, 20, 36, 36], [8, 8, 56, 24]], [0.6, 0.7], [0, 1]),
        (0.0, 0.5, [[16, 16, 32, 32], [0, 0, 48, 16]], [0.6, 0.7], [0, 1]),
        (0.5, 0.8, [], [], []),
    ],
)
def test_decode_gfl_known_cells(offset, threshold, boxes, scores, classes):
    cls, dist = _gfl_maps()
    got_boxes, got_scores, got_classes = decode_gfl(
        cls, dist, (32, 32), (8, 16), reg_max=3, score_threshold=threshold, center_offset=offset
    )
    np.testing.assert_allclose(got_boxes.reshape(-1, 4), np.array(boxes).reshape(-1, 4), atol=1e-3)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-6)
    assert got_classes.tolist() == classes


def test_decode_gfl_rejects_mismatched_maps():
    cls, dist = _gfl_maps()
    with pytest.raises(ValueError, match="distance bins"):
        decode_gfl(cls, dist, (32, 32), (8, 16), reg_max=7, score_threshold=0.5)


def test_decode_yolov5_scores_are_obj_times_class():
    out = np.zeros((1, 3, 85), np.float32)
    out[0, 0, :5] = (100, 50, 20, 10, 0.9)
    out[0, 0, 5 + 2] = 0.8  # 0.72, class 2
    out[0, 1, :5] = (10, 10, 4, 4, 0.3)
    out[0, 1, 5 + 0] = 0.9  # 0.27, class 0
    out[0, 2, :5] = (10, 10, 4, 4, 0.9)
    out[0, 2, 5 + 0] = 0.1
    out[0, 2, 5 + 1] = 0.6  # 0.54, class 1 beats class 0
    boxes, scores, classes = decode_yolov5(out, 0.5)
    assert boxes.tolist() == [[90, 45, 110, 55], [8, 8, 12, 12]]
    np.testing.assert_allclose(scores, [0.72, 0.54], rtol=1e-6)
    assert classes.tolist() == [2, 1]


def test_decode_yolov8_channels_first():
    out = np.zeros((1, 84, 3), np.float32)
    out[0, :4, 0] = (320, 240, 64, 32)
    out[0, 4 + 5, 0] = 0.95
    out[0, :4, 2] = (8, 8, 16, 16)
    out[0, 4 + 0, 2] = 0.49
    boxes, scores, classes = decode_yolov8(out, 0.25)
    assert boxes.tolist() == [[288, 224, 352, 256], [0, 0, 16, 16]]
    np.testing.assert_allclose(scores, [0.95, 0.49], rtol=1e-6)
    assert classes.tolist() == [5, 0]
    assert len(decode_yolov8(out, 0.96)[0]) == 0


# --- family adapters: shortcuts with the decoders' exact results ------------------------------


def _same(got, want) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        assert g.shape == w.shape
        assert np.array_equal(g, w, equal_nan=g.dtype.kind == "f")


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.65, 0.8, 1.0])
@pytest.mark.parametrize("family", ["nanodet", "picodet"])
def test_gfl_family_decode_equals_decode_gfl(family, threshold):
    cls, dist = _gfl_maps()
    spec = SPECS[family]
    want = decode_gfl(
        cls, dist, (32, 32), (8, 16), reg_max=3, score_threshold=threshold,
        center_offset=spec.center_offset,
    )  # fmt: skip
    _same(spec.decode(cls + dist, (32, 32), threshold), want)


def test_gfl_family_decode_still_checks_levels_it_could_skip():
    cls, dist = _gfl_maps()
    dist[1] = np.zeros((1, 4, 12), np.float32)  # wrong bin count on a level scoring < 0.8
    with pytest.raises(ValueError, match="distance bins"):
        SPECS["nanodet"].decode(cls + dist, (32, 32), 0.8)


def test_gfl_family_decode_with_nan_scores():
    cls, dist = _gfl_maps()
    cls[1][0, 2, 0] = np.nan
    for threshold in (0.5, 0.65, 0.8):
        want = decode_gfl(
            cls, dist, (32, 32), (8, 16), reg_max=3, score_threshold=threshold, center_offset=0.5
        )
        _same(SPECS["nanodet"].decode(cls + dist, (32, 32), threshold), want)


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.85, 0.95])
def test_yolox_family_decode_equals_decode_yolox(threshold):
    out = _yolox_tensor()
    want = decode_yolox(out, (64, 64), (8, 16, 32), threshold)
    _same(SPECS["yolox"].decode([out], (64, 64), threshold), want)


def test_yolox_family_decode_still_checks_the_layout():
    with pytest.raises(ValueError, match="grid cells"):
        SPECS["yolox"].decode([np.zeros((1, 80, 85), np.float32)], (64, 64), 0.95)


@pytest.mark.parametrize("seed", range(4))
def test_yolov8_family_decode_equals_decode_yolov8(seed):
    rng = np.random.default_rng(seed)
    out = rng.random((1, 84, 500), dtype=np.float32) * np.float32(0.6)
    out[0, :4] *= 400
    out[0, rng.integers(4, 84, 10), rng.integers(0, 500, 10)] = 0.9
    if seed % 2:
        out.reshape(-1)[rng.integers(0, out.size, 40)] = np.nan
    for threshold in (0.05, 0.5, 0.59, 0.95):
        _same(SPECS["yolov8"].decode([out], (320, 320), threshold), decode_yolov8(out, threshold))


def test_yolov8_family_decode_still_checks_the_layout():
    with pytest.raises(ValueError, match="4 \\+ classes"):
        SPECS["yolov8"].decode([np.zeros((1, 4, 10), np.float32)], (320, 320), 0.5)


# --- nms --------------------------------------------------------------------------------------

_A = [0, 0, 10, 10]
_A_SHIFTED = [1, 0, 11, 10]  # IoU with _A = 90 / 110 = 0.818
_A_HALF = [5, 0, 15, 10]  # IoU with _A = 50 / 150 = 0.333
_FAR = [100, 100, 110, 110]


@pytest.mark.parametrize(
    ("boxes", "scores", "classes", "iou", "max_det", "kept"),
    [
        ([_A, _A_SHIFTED], [0.9, 0.8], [0, 0], 0.5, 10, [0]),
        ([_A, _A_SHIFTED], [0.8, 0.9], [0, 0], 0.5, 10, [1]),
        ([_A, _A_SHIFTED], [0.9, 0.8], [0, 1], 0.5, 10, [0, 1]),
        ([_A, _A_HALF], [0.9, 0.8], [0, 0], 0.3, 10, [0]),
        ([_A, _A_HALF], [0.9, 0.8], [0, 0], 0.34, 10, [0, 1]),
        ([_A, _A_SHIFTED, _FAR], [0.7, 0.9, 0.8], [3, 3, 3], 0.5, 10, [1, 2]),
        ([_A, _FAR, _A_HALF], [0.5, 0.9, 0.7], [0, 0, 0], 0.5, 2, [1, 2]),
        ([_A, _FAR], [0.5, 0.9], [0, 0], 0.5, 0, []),
        ([_A, _A], [0.9, 0.9], [1, 1], 0.99, 10, [0]),
        ([[-5, -5, 10, 10], _A], [0.9, 0.8], [0, 1], 0.1, 10, [0, 1]),
        ([[-5, -5, 10, 10], _A], [0.9, 0.8], [1, 1], 0.1, 10, [0]),
    ],
)
def test_nms(boxes, scores, classes, iou, max_det, kept):
    got = nms(
        np.array(boxes, np.float32),
        np.array(scores, np.float32),
        np.array(classes, np.int64),
        iou,
        max_det,
    )
    assert got.dtype == np.int64
    assert got.tolist() == kept


def test_nms_empty():
    got = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5, 10)
    assert got.tolist() == []


# --- family detection -------------------------------------------------------------------------


def _gfl(cells: list[int], classes: int = 80, dist: int = 32) -> list[list[int]]:
    """GFL output shapes: one class map per level, then one distance map per level."""
    return [[1, n, classes] for n in cells] + [[1, n, dist] for n in cells]


_NANODET_NAMES = [f"cls_pred_stride_{s}" for s in (8, 16, 32)] + [
    f"dis_pred_stride_{s}" for s in (8, 16, 32)
]


@pytest.mark.parametrize(
    ("input_shape", "outputs", "family"),
    [
        ([1, 3, 416, 416], [[1, 3549, 85]], "yolox"),
        ([1, 3, 640, 640], [[1, 8400, 85]], "yolox"),
        ([1, 3, 640, 640], [[1, 25200, 85]], "yolov5"),
        ([1, 3, 320, 320], [[1, 6300, 85]], "yolov5"),
        ([1, 3, 1280, 1280], [[1, 3 * (25600 + 6400 + 1600 + 400), 85]], "yolov5"),
        ([1, 3, 640, 640], [[1, 84, 8400]], "yolov8"),
        ([1, 3, 384, 640], [[1, 84, 5040]], "yolov8"),
        ([1, 3, 320, 320], [[1, 6, 2100]], "yolov8"),
        ([1, 3, 320, 320], _gfl([1600, 400, 100]), "nanodet"),
        ([1, 3, 320, 320], _gfl([1600, 400, 100], classes=20, dist=68), "nanodet"),
        ([1, 3, 320, 320], _gfl([1600, 400, 100, 25]), "picodet"),
        ([1, 3, 416, 416], _gfl([2704, 676, 169, 49]), "picodet"),
    ],
)
def test_detect_family(input_shape, outputs, family):
    names = [f"out{i}" for i in range(len(outputs))]
    assert detect_family(input_shape, names, outputs, "m.onnx") == family


@pytest.mark.parametrize(
    ("input_shape", "outputs", "match"),
    [
        ([1, 3, 416, 416], [[1, 1000, 85]], "is not a known family layout"),
        ([1, 3, 416, 416], [[1, 3549, 85, 1]], "is not a known family layout"),
        ([1, 3, 416, 416], [[1, "n", 85]], "is not a known family layout"),
        ([1, 3, 320, 320], _gfl([1600, 400]), "is not a known family layout"),
        ([1, 3, 320, 320], _gfl([1600, 400, 100], dist=30), "is not a known family layout"),
        ([1, 3, 320, 320], _gfl([1600, 400, 100, 25, 9]), "is not a known family layout"),
        ([1, 3, 320, 320], _gfl([1600, 400, 50]), "is not a known family layout"),
        ([1, 3, 320, 320], [[1, 2100, 85], [1, 84, 2100]], "is not a known family layout"),
        ([1, 3, "h", "w"], [[1, 84, 8400]], r"fixed H and W"),
        ([1, 1, 320, 320], [[1, 84, 2100]], r"expected \[1, 3, H, W\]"),
        ([1, 3, 320], [[1, 84, 2100]], r"expected \[1, 3, H, W\]"),
        ([1, 3, 16, 16], [[1, 6, 6]], "matches several families"),
    ],
)
def test_detect_family_unknown_layouts(input_shape, outputs, match):
    names = [f"out{i}" for i in range(len(outputs))]
    with pytest.raises(ModelError, match=match) as info:
        detect_family(input_shape, names, outputs, "/models/odd.onnx")
    assert "/models/odd.onnx" in str(info.value)


def test_detect_family_error_lists_outputs():
    with pytest.raises(ModelError, match=r"cls_pred_stride_8 \[1, 1600, 80\]"):
        detect_family([1, 3, 320, 320], _NANODET_NAMES[:1], [[1, 1600, 80]], "x.onnx")


def test_input_size_of_is_width_height():
    assert input_size_of([1, 3, 384, 640], "m") == (640, 384)
    assert input_size_of(["batch", 3, 320, 320], "m") == (320, 320)


@pytest.mark.parametrize(
    ("family", "n_outputs", "ok"),
    [
        ("yolox", 1, True),
        ("yolov8", 8, False),
        ("picodet", 8, True),
        ("nanodet", 8, False),
        ("nanodet", 6, True),
    ],
)
def test_check_layout(family, n_outputs, ok):
    if ok:
        check_layout(family, n_outputs, "m.onnx")
    else:
        with pytest.raises(ModelError, match=r"m\.onnx has"):
            check_layout(family, n_outputs, "m.onnx")
