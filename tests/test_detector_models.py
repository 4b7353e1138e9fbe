"""The real models from ../shared on real images: family detection, boxes, filters, errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import DetectorConfig
from agent.domain import COCO_LABELS, Detections
from agent.errors import ModelError
from agent.vision.detector import OnnxDetector, load_detector
from agent.vision.detector.annotate import draw_detections
from agent.vision.detector.decode import decode_gfl, decode_yolox, nms
from agent.vision.detector.families import SPECS, FamilySpec, Resize
from agent.vision.detector.preprocess import LetterboxInfo, StretchInfo, boxes_to_original
from agent.vision.detector.session import open_session, session_options
from tests.conftest import MEDIA, MODELS

REAL_MODELS = [
    ("yolox_nano_416.onnx", "yolox", (416, 416)),
    ("picodet_s_320_coco.onnx", "picodet", (320, 320)),
    ("nanodet_m_320.onnx", "nanodet", (320, 320)),
]
ALL_LABELS = ["person", "bicycle", "car", "bus", "truck", "tie"]

# Reference boxes on bus.jpg (810x1080): the bus and the three people standing in front of it.
BUS = [15, 230, 805, 740]
BUS_PEOPLE = [[50, 395, 225, 900], [215, 402, 347, 858], [675, 380, 810, 876]]
ZIDANE = [720, 40, 1150, 715]  # the man on the right in zidane.jpg (1280x720)


def iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def boxes_of(det: Detections, label: str) -> list[list[float]]:
    return [det.xyxy[i].tolist() for i in range(len(det)) if det.label(i) == label]


def det_model_path(det: OnnxDetector) -> Path:
    return MODELS / next(name for name, family, _ in REAL_MODELS if family == det.family)


def image(name: str) -> np.ndarray:
    img = cv2.imread(str(MEDIA / name))
    assert img is not None, name
    return img


@pytest.fixture(scope="module", params=REAL_MODELS, ids=[m[1] for m in REAL_MODELS])
def real(request, shared_dir) -> tuple[OnnxDetector, str, tuple[int, int]]:
    name, family, size = request.param
    det = load_detector(
        DetectorConfig(model=MODELS / name, threads=1, labels=ALL_LABELS, min_score=0.4)
    )
    yield det, family, size
    det.close()


def test_auto_detects_the_family(real):
    det, family, size = real
    assert det.family == family
    assert det.input_size == size


def test_bus_image_finds_the_bus_and_people(real):
    det, _, _ = real
    got = det.detect(image("bus.jpg"))
    buses = boxes_of(got, "bus")
    people = boxes_of(got, "person")
    assert len(buses) == 1
    assert iou(buses[0], BUS) > 0.85
    bus_area = (buses[0][2] - buses[0][0]) * (buses[0][3] - buses[0][1])
    assert bus_area > 0.4 * 810 * 1080
    assert len(people) >= 3
    for ref in BUS_PEOPLE:
        assert max(iou(ref, p) for p in people) > 0.7, ref
    assert (got.xyxy >= 0).all()
    assert (got.xyxy[:, 2] <= 810).all()
    assert (got.xyxy[:, 3] <= 1080).all()
    assert (got.scores >= 0.4).all()
    assert list(got.scores) == sorted(got.scores, reverse=True)


def test_zidane_two_people(real):
    det, _, _ = real
    got = det.detect(image("zidane.jpg"))
    got = got.select(got.scores >= 0.5)  # the default min_score (NanoDet has a 0.41 ghost)
    people = boxes_of(got, "person")
    assert len(people) == 2
    assert max(iou(ZIDANE, p) for p in people) > 0.8
    centres = sorted((p[0] + p[2]) / 2 for p in people)
    assert centres[0] < 640 < centres[1]


@pytest.mark.parametrize("name", ["voc_000004.jpg", "street.png"])
def test_cars(real, name):
    det, _, _ = real
    cars = boxes_of(det.detect(image(name)), "car")
    assert len(cars) >= (5 if name.startswith("voc") else 1)
    if name == "street.png":  # the big car in the bottom-left quarter
        assert max(iou([110, 470, 442, 621], c) for c in cars) > 0.8


def test_label_filter_and_per_label_threshold(real):
    det, _, _ = real
    path = det_model_path(det)
    bus = image("bus.jpg")
    only_people = load_detector(DetectorConfig(model=path, threads=1, labels=["person"]))
    got = only_people.detect(bus)
    assert len(got) >= 3
    assert {got.label(i) for i in range(len(got))} == {"person"}

    cut = float(got.scores[1] + got.scores[2]) / 2  # between the 2nd and 3rd best person
    strict = load_detector(
        DetectorConfig(
            model=path,
            threads=1,
            labels=["person", "bus"],
            min_score=0.3,
            label_min_score={"person": cut},
        )
    )
    got = strict.detect(bus)
    assert len(boxes_of(got, "person")) == 2
    assert len(boxes_of(got, "bus")) == 1
    assert (got.scores[got.class_ids == 0] >= cut).all()


def test_annotate_draws_on_a_copy(real):
    det, _, _ = real
    img = image("zidane.jpg")
    before = img.copy()
    got = det.detect(img)
    drawn = draw_detections(img, got)
    assert np.array_equal(img, before)
    assert drawn.shape == img.shape
    assert drawn.dtype == np.uint8
    changed = np.argwhere((drawn != img).any(axis=2))
    x1, y1, x2, y2 = got.xyxy.min(axis=0)[:2].tolist() + got.xyxy.max(axis=0)[2:].tolist()
    assert changed[:, 1].min() == pytest.approx(x1, abs=2)
    assert changed[:, 1].max() == pytest.approx(x2, abs=2)
    assert changed[:, 0].max() == pytest.approx(y2, abs=2)
    assert changed[:, 0].min() < y1  # the label tag sits above the box


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("truncated", "INVALID_PROTOBUF"),
        ("random", "INVALID_PROTOBUF"),
        ("empty", "No graph"),
    ],
)
def test_corrupt_model_files_raise_model_error(tmp_path, shared_dir, content, reason):
    path = tmp_path / f"{content}.onnx"
    if content == "truncated":
        path.write_bytes((MODELS / "yolox_nano_416.onnx").read_bytes()[:1000])
    elif content == "random":
        path.write_bytes(np.random.default_rng(7).bytes(4096))
    else:
        path.write_bytes(b"")
    with pytest.raises(ModelError, match=reason) as info:
        load_detector(DetectorConfig(model=path))
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_missing_model_raises_model_error(tmp_path, where):
    path = tmp_path / "nope.onnx" if where == "missing" else tmp_path
    with pytest.raises(ModelError, match=r"not found|not a regular file") as info:
        load_detector(DetectorConfig(model=path))
    assert str(path) in str(info.value)


# --- the optimised detect() against a straightforward reference ------------------------------


def video_frame(name: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(MEDIA / name))
    try:
        for _ in range(index + 1):
            ok, frame = cap.read()
            assert ok, (name, index)
    finally:
        cap.release()
    return frame


@pytest.fixture(scope="module")
def real_images(shared_dir) -> dict[str, np.ndarray]:
    return {
        "one-by-one 768x432": video_frame("one-by-one-person-detection.mp4", 120),
        "traffic 1920x1080": video_frame("degirum_TrafficHD_short.mp4", 10),
        "bus 810x1080": image("bus.jpg"),
        "zidane 1280x720": image("zidane.jpg"),
    }


def reference_preprocess(
    spec: FamilySpec, img: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, LetterboxInfo | StretchInfo]:
    """Each family's input written the plain way: a padded canvas, then (pixel - mean) / std."""
    width, height = size
    h, w = img.shape[:2]
    placement: LetterboxInfo | StretchInfo
    if spec.resize is Resize.STRETCH:
        canvas = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        placement = StretchInfo(width / w, height / h)
    else:
        scale = min(width / w, height / h)
        new_w, new_h = round(w * scale), round(h * scale)
        pad_x = (width - new_w) // 2 if spec.center_pad else 0
        pad_y = (height - new_h) // 2 if spec.center_pad else 0
        canvas = np.full((height, width, 3), spec.pad_value, np.uint8)
        resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
        placement = LetterboxInfo(scale, pad_x, pad_y)
    pixels = canvas[:, :, ::-1] if spec.rgb else canvas
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    blob = (pixels.astype(np.float32) - mean) / std
    return blob.transpose(2, 0, 1)[np.newaxis], placement


@pytest.mark.parametrize("size", [(416, 416), (320, 320), (640, 384)])
@pytest.mark.parametrize("family", list(SPECS))
def test_preprocess_matches_the_reference_on_real_images(real_images, family, size):
    spec = SPECS[family]
    for name, img in real_images.items():
        want, want_placement = reference_preprocess(spec, img, size)
        got, placement = spec.preprocess(img, size)
        assert placement == want_placement, name
        assert got.shape == want.shape
        assert got.dtype == np.float32
        assert got.flags.c_contiguous
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)


def reference_detect(path: Path, img: np.ndarray, min_score: float) -> Detections:
    """Reference preprocessing, a separate session, the decoders called directly, NMS."""
    session = open_session(path, session_options(1, False))
    inp = session.get_inputs()[0]
    size = (inp.shape[3], inp.shape[2])
    family = next(f for n, f, _ in REAL_MODELS if n == path.name)
    spec = SPECS[family]
    blob, placement = reference_preprocess(spec, img, size)
    outputs = session.run(None, {inp.name: blob})
    if family == "yolox":
        boxes, scores, ids = decode_yolox(outputs[0], size, spec.strides, min_score)
    else:
        levels = len(outputs) // 2
        reg_max = outputs[levels].shape[-1] // 4 - 1
        boxes, scores, ids = decode_gfl(
            outputs[:levels], outputs[levels:], size, spec.strides[:levels],
            reg_max=reg_max, score_threshold=min_score, center_offset=spec.center_offset,
        )  # fmt: skip
    keep = nms(boxes, scores, ids, 0.45, 100)
    xyxy = boxes_to_original(boxes[keep], placement, (img.shape[1], img.shape[0]))
    return Detections(xyxy, scores[keep], ids[keep], COCO_LABELS)


@pytest.mark.parametrize("min_score", [0.5, 0.2])
def test_detect_matches_the_reference_pipeline(real, real_images, min_score):
    det, _, _ = real
    path = det_model_path(det)
    every = load_detector(
        DetectorConfig(
            model=path, threads=1, labels=list(COCO_LABELS), min_score=min_score, nms_iou=0.45
        )
    )
    found = 0
    for name, img in real_images.items():
        got, want = every.detect(img), reference_detect(path, img, min_score)
        assert got.class_ids.tolist() == want.class_ids.tolist(), name
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.01, err_msg=name)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6, err_msg=name)
        found += len(got)
    assert found >= 8  # the comparison is about real boxes
    every.close()


def test_one_detector_shared_by_threads(real, real_images):
    det, _, _ = real
    images = list(real_images.values())
    expected = [det.detect(img) for img in images]
    jobs = [i % len(images) for i in range(24)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: (i, det.detect(images[i])), jobs))
    for i, got in results:
        assert got.class_ids.tolist() == expected[i].class_ids.tolist()
        assert np.array_equal(got.xyxy, expected[i].xyxy)
