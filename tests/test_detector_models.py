"""The real models from ../shared on real images: family detection, boxes, filters, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import DetectorConfig
from agent.detector import OnnxDetector, load_detector
from agent.detector.annotate import draw_detections
from agent.domain import Detections
from agent.errors import ModelError
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
