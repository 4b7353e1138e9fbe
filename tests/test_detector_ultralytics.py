"""Ultralytics-style exports (YOLOv5 and YOLOv8/11 layouts) through OnnxDetector, using
synthetic ONNX graphs whose outputs encode known boxes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from pydantic import ValidationError

from agent.config import DetectorConfig
from agent.domain import COCO_LABELS
from agent.errors import ConfigError, DetectorError, ModelError
from agent.vision.detector import Detector, OnnxDetector, load_detector
from agent.vision.detector.families import SPECS
from agent.vision.detector.session import class_thresholds
from tests.onnx_synth import Row, constant_model, yolov5_output, yolov8_output

PERSON, CAR, BUS, DOG = (COCO_LABELS.index(n) for n in ("person", "car", "bus", "dog"))


def _cfg(path, **kw) -> DetectorConfig:
    return DetectorConfig(model=path, threads=1, **kw)


def _as_list(det):
    return [
        (det.label(i), round(float(det.scores[i]), 4), [round(float(v), 3) for v in det.xyxy[i]])
        for i in range(len(det))
    ]


# YOLOv8 at 320 on a 640x480 frame: scale 0.5, centred padding of 40 rows at the top.
V8_ROWS = [
    Row(160, 160, 100, 50, PERSON, 0.9),  # -> [220, 190, 420, 290]
    Row(162, 160, 100, 50, PERSON, 0.8),  # same person, suppressed by NMS
    Row(80, 100, 40, 40, CAR, 0.6),  # -> [120, 80, 200, 160]
    Row(250, 250, 20, 20, DOG, 0.95),  # not a configured label
    Row(30, 200, 10, 10, PERSON, 0.3),  # under min_score
    Row(310, 270, 40, 40, CAR, 0.7),  # past the bottom-right corner: clipped
]


@pytest.fixture
def v8_model(tmp_path):
    return constant_model(tmp_path / "yolov8n.onnx", {"output0": yolov8_output(320, V8_ROWS)})


@pytest.fixture
def v5_model(tmp_path):
    rows = [
        Row(320, 320, 200, 100, PERSON, 0.9, obj=0.9),  # 0.81 -> [440, 260, 840, 460]
        Row(100, 200, 60, 40, BUS, 0.9, obj=0.5),  # 0.45 -> [140, 80, 260, 160]
        Row(500, 500, 60, 40, CAR, 0.9, obj=0.4),  # 0.36, under car's threshold
    ]
    output = yolov5_output(640, rows)
    return constant_model(tmp_path / "yolov5s.onnx", {"output": output}, (1, 3, 640, 640))


def test_yolov8_layout_auto_detected_and_mapped_to_frame(v8_model):
    with load_detector(_cfg(v8_model)) as det:
        assert isinstance(det, Detector)
        assert det.family == "yolov8"
        assert det.input_size == (320, 320)
        got = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert _as_list(got) == [
        ("person", 0.9, [220.0, 190.0, 420.0, 290.0]),
        ("car", 0.7, [580.0, 420.0, 640.0, 480.0]),
        ("car", 0.6, [120.0, 80.0, 200.0, 160.0]),
    ]
    assert got.xyxy.dtype == np.float32
    assert got.scores.dtype == np.float32
    assert got.class_ids.dtype == np.int64


def test_yolov5_layout_auto_detected_with_label_threshold(v5_model):
    cfg = _cfg(
        v5_model,
        labels=["person", "bus", "car"],
        min_score=0.5,
        label_min_score={"bus": 0.4, "car": 0.4},
    )
    det = OnnxDetector.from_config(cfg)
    assert det.family == "yolov5"
    assert det.input_size == (640, 640)
    got = det.detect(np.zeros((720, 1280, 3), np.uint8))
    assert _as_list(got) == [
        ("person", 0.81, [440.0, 260.0, 840.0, 460.0]),
        ("bus", 0.45, [140.0, 80.0, 260.0, 160.0]),
    ]
    det.close()
    with pytest.raises(DetectorError, match="closed"):
        det.detect(np.zeros((720, 1280, 3), np.uint8))


def test_label_filter_keeps_only_configured_labels(v8_model):
    det = load_detector(_cfg(v8_model, labels=["car"]))
    got = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert [got.label(i) for i in range(len(got))] == ["car", "car"]
    det = load_detector(_cfg(v8_model, labels=["dog"], min_score=0.2))
    got = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert _as_list(got) == [("dog", 0.95, [480.0, 400.0, 520.0, 440.0])]


def test_per_label_threshold_lowers_one_label(v8_model):
    det = load_detector(_cfg(v8_model, labels=["person"], label_min_score={"person": 0.25}))
    got = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert [round(float(s), 2) for s in got.scores] == [0.9, 0.3]


def test_non_square_frame_portrait(v8_model):
    # 480 wide, 960 high: scale 1/3, 80 columns of padding on the left
    got = load_detector(_cfg(v8_model)).detect(np.zeros((960, 480, 3), np.uint8))
    assert _as_list(got)[0] == ("person", 0.9, [90.0, 405.0, 390.0, 555.0])


def test_family_override(v8_model):
    det = load_detector(_cfg(v8_model, family="yolov8"))
    assert det.family == "yolov8"
    assert len(det.detect(np.zeros((480, 640, 3), np.uint8))) == 3
    with pytest.raises(ModelError, match=r"yolov8n.onnx has 1 outputs; family picodet"):
        load_detector(_cfg(v8_model, family="picodet"))
    with pytest.raises(ModelError, match=r"yolov8n.onnx predicts 2095 classes"):
        load_detector(_cfg(v8_model, family="yolox"))


def test_wrong_family_override_fails_at_decode(tmp_path):
    v5 = yolov5_output(320, [Row(160, 160, 100, 50, PERSON, 0.9)])
    path = constant_model(tmp_path / "v5.onnx", {"output": v5})
    assert load_detector(_cfg(path)).family == "yolov5"
    wrong = load_detector(_cfg(path, family="yolox"))
    with pytest.raises(DetectorError, match="cannot decode yolox output") as info:
        wrong.detect(np.zeros((480, 640, 3), np.uint8))
    assert isinstance(info.value.__cause__, ValueError)


def test_unknown_layout_raises_model_error(tmp_path):
    path = constant_model(tmp_path / "odd.onnx", {"out": np.zeros((1, 100, 85), np.float32)})
    with pytest.raises(ModelError, match=r"odd.onnx.*set detector.family"):
        load_detector(_cfg(path))


def test_dynamic_input_raises_model_error(tmp_path):
    path = constant_model(
        tmp_path / "dyn.onnx",
        {"output0": yolov8_output(320, V8_ROWS)},
        input_shape=(1, 3, "h", "w"),
    )
    with pytest.raises(ModelError, match=r"dyn.onnx.*fixed H and W"):
        load_detector(_cfg(path))


def test_unknown_label_is_a_config_error(v8_model):
    # the config refuses it when it loads; the session checks again against the model's table
    with pytest.raises(ValidationError, match="unicorn"):
        _cfg(v8_model, labels=["person", "unicorn"])
    with pytest.raises(ConfigError, match="unicorn"):
        class_thresholds(["person", "unicorn"], 0.5, {}, COCO_LABELS)


def test_bad_image_is_rejected(v8_model):
    det = load_detector(_cfg(v8_model))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        det.detect(np.zeros((480, 640), np.uint8))


def test_model_with_other_classes_is_rejected(tmp_path):
    rows = [Row(160, 160, 100, 50, 1, 0.9)]
    path = constant_model(tmp_path / "custom3.onnx", {"out": yolov8_output(320, rows, classes=3)})
    with pytest.raises(ModelError, match=r"custom3.onnx predicts 3 classes"):
        load_detector(_cfg(path))


class _FailingSession:
    """Stands in for an onnxruntime session whose run() fails the way onnxruntime does."""

    def get_inputs(self):
        return [SimpleNamespace(name="images", shape=[1, 3, 320, 320])]

    def run(self, output_names, feeds):
        assert feeds["images"].shape == (1, 3, 320, 320)
        raise ort_errors.RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : boom")


def test_inference_failure_is_a_detector_error():
    thresholds = class_thresholds(["person"], 0.5, {})
    det = OnnxDetector(_FailingSession(), SPECS["yolov8"], thresholds, 0.45)
    assert det.input_size == (320, 320)
    with pytest.raises(DetectorError, match=r"inference failed.*boom") as info:
        det.detect(np.zeros((480, 640, 3), np.uint8))
    assert isinstance(info.value.__cause__, ort_errors.RuntimeException)
