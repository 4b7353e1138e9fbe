"""Small and distant objects: detection on tiles at full resolution, merged with the whole frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.config import DetectorConfig
from agent.domain import COCO_LABELS, Detections
from agent.vision.detector import load_detector
from agent.vision.tiling import TiledDetector, detect_in_regions, tile_regions
from tests.conftest import MEDIA, MODELS
from tests.fakes import FakeDetector


@pytest.mark.parametrize(
    ("size", "grid", "overlap", "expected"),
    [
        ((100, 50), (1, 1), 0.2, [(0, 0, 100, 50)]),
        ((100, 50), (2, 1), 0.0, [(0, 0, 50, 50), (50, 0, 100, 50)]),
        ((120, 60), (2, 1), 0.2, [(0, 0, 67, 60), (53, 0, 120, 60)]),
        ((100, 100), (2, 2), 0.0,
         [(0, 0, 50, 50), (50, 0, 100, 50), (0, 50, 50, 100), (50, 50, 100, 100)]),
    ],
)  # fmt: skip
def test_tile_regions_cover_the_frame(size, grid, overlap, expected):
    assert tile_regions(*size, *grid, overlap) == expected


def person(*boxes_scores):
    return Detections(
        np.array([b for b, _ in boxes_scores], np.float32).reshape(-1, 4),
        np.array([s for _, s in boxes_scores], np.float32),
        np.full(len(boxes_scores), COCO_LABELS.index("person"), np.int64),
    )


def test_whole_frame_wins_and_cut_off_parts_are_dropped():
    """Call 0 is the whole frame, then one per region (boxes in the region's pixels)."""
    answers = {
        0: person(((10, 10, 40, 90), 0.8)),  # a big person, seen whole
        1: person(
            ((10, 50, 40, 90), 0.9), ((60, 60, 66, 75), 0.7)
        ),  # their lower half; a small one
        2: person(((0, 60, 6, 75), 0.6)),  # the small one again, from the next tile (x offset 60)
    }
    det = FakeDetector(lambda i: answers[i])
    image = np.zeros((100, 140, 3), np.uint8)
    got = detect_in_regions(det, image, [(0, 0, 80, 100), (60, 0, 140, 100)], nms_iou=0.45)
    assert sorted(tuple(int(v) for v in b) for b in got.xyxy) == [
        (10, 10, 40, 90),
        (60, 60, 66, 75),
    ]


@pytest.fixture(scope="module")
def detector():
    det = load_detector(DetectorConfig(model=MODELS / "yolox_nano_416.onnx", threads=1))
    yield det
    det.close()


def persons(dets: Detections) -> int:
    return sum(1 for i in range(len(dets)) if dets.label(i) == "person")


def test_tiles_find_the_small_people_of_a_crowded_street(detector):
    image = cv2.imread(str(MEDIA / "street.png"))
    whole = persons(detector.detect(image))
    tiled = persons(
        TiledDetector(detector, cols=2, rows=1, overlap=0.2, nms_iou=0.45).detect(image)
    )
    assert whole <= 6
    assert tiled >= 2 * whole


@pytest.mark.parametrize(("image", "people"), [("zidane.jpg", 2), ("bus.jpg", 3)])
def test_tiles_do_not_double_count_large_people(detector, image, people):
    pic = cv2.imread(str(MEDIA / image))
    assert persons(detector.detect(pic)) == people
    tiled = TiledDetector(detector, cols=2, rows=2, overlap=0.2, nms_iou=0.45).detect(pic)
    assert persons(tiled) == people
