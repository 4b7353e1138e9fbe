"""Pure logic of zones, privacy masks and object filters (table-driven), and their config checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.cli import main
from agent.config import CameraConfig, ObjectFilterConfig, ZoneConfig
from agent.domain import COCO_LABELS, Detections, EventType, Frame, Track
from agent.vision.events import EventBuilder
from agent.vision.geometry import contains, polygon_problem
from agent.vision.scene import CameraScene, PrivacyMask, keep_detections

SQUARE = [(0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)]
W, H = 100, 100


@pytest.mark.parametrize(
    ("points", "problem"),
    [
        (SQUARE, None),
        ([(0, 0), (1, 0), (0, 1)], None),
        ([(0, 0), (1, 0)], "at least 3 points"),
        ([(0, 0), (1.2, 0), (0, 1)], "outside the frame"),
        ([(0, -0.1), (1, 0), (0, 1)], "outside the frame"),
        ([(0, 0), (0.5, 0.5), (1, 1)], "no area"),
        ([(0, 0), (1, 1), (1, 0), (0, 1)], "self-intersecting"),  # a bow tie
        ([(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.5, 0.05), (0.1, 0.9)], "self-intersecting"),
    ],
)
def test_polygon_problems(points, problem):
    got = polygon_problem(points)
    if problem is None:
        assert got is None
    else:
        assert got is not None
        assert problem in got


@pytest.mark.parametrize(
    ("x", "y", "inside"),
    [(0.4, 0.4, True), (0.1, 0.4, False), (0.6, 0.4, True), (0.7, 0.7, False), (0.2, 0.2, True)],
)
def test_contains(x, y, inside):
    assert contains(tuple(SQUARE), x, y) is inside


@pytest.mark.parametrize(
    ("field", "value", "where", "reason"),
    [
        ("privacy_masks", [[[0, 0], [1.5, 0], [0, 1]]], "cameras.0.privacy_masks.0", "outside"),
        ("privacy_masks", [[[0, 0], [1, 0]]], "cameras.0.privacy_masks.0", "at least 3"),
        ("zones", [{"name": "gate", "polygon": [[0, 0], [1, 1], [1, 0], [0, 1]]}],
         "cameras.0.zones.0.polygon", "self-intersecting"),
        ("filters", {"person": {"masks": [[[0, 0], [1, 1], [1, 0], [0, 1]]]}},
         "cameras.0.filters.person.masks.0", "self-intersecting"),
        ("required_zones", ["nowhere"], "cameras.0", "required_zones"),
    ],
)  # fmt: skip
def test_check_config_names_the_polygon_field(tmp_path, capsys, field, value, where, reason):
    cfg = {"node_id": "n", "commune_id": "c", "cameras": [{"id": "cam", "source": "0",
           field: value}]}  # fmt: skip
    path = tmp_path / "a.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith(where + ":"))
    assert reason in line


def test_privacy_mask_blacks_out_exactly_the_polygon_on_a_copy():
    image = np.full((H, W, 3), 200, np.uint8)
    out = PrivacyMask([tuple(SQUARE)]).apply(image)
    assert out[40, 40].tolist() == [0, 0, 0]
    assert out[10, 10].tolist() == [200, 200, 200]
    assert out[70, 70].tolist() == [200, 200, 200]
    assert image[40, 40].tolist() == [200, 200, 200]  # the caller's frame is untouched


def dets(*items):
    return Detections(
        np.array([b for _, b, _ in items], np.float32),
        np.array([s for _, _, s in items], np.float32),
        np.array([COCO_LABELS.index(lab) for lab, _, _ in items], np.int64),
    )


@pytest.mark.parametrize(
    ("flt", "box", "kept"),
    [
        ({}, (10, 10, 20, 40), True),
        ({"min_area": 0.05}, (10, 10, 20, 40), False),  # 300 px of 10000: 0.03
        ({"max_area": 0.02}, (10, 10, 20, 40), False),
        ({"min_ratio": 0.2, "max_ratio": 0.5}, (10, 10, 20, 40), True),  # w/h 1/3
        ({"min_ratio": 0.5}, (10, 10, 20, 40), False),
        ({"masks": [SQUARE]}, (30, 10, 40, 40), False),  # bottom centre (0.35, 0.4): inside
        ({"masks": [SQUARE]}, (30, 30, 40, 70), True),  # (0.35, 0.7): below the mask
        ({"masks": [SQUARE]}, (70, 10, 80, 50), True),  # (0.75, 0.5): beside it
    ],
)
def test_object_filters(flt, box, kept):
    f = ObjectFilterConfig(**flt)
    got = keep_detections(dets(("person", box, 0.9)), {"person": f}, W, H)
    inside = bool(flt.get("masks")) and contains(
        tuple(SQUARE), (box[0] + box[2]) / 200, box[3] / 100
    )
    assert bool(got[0]) is (kept and not inside)
    # other labels are never filtered by the person filter
    assert keep_detections(dets(("car", box, 0.9)), {"person": f}, W, H).all()


def track(tid=1, box=(30, 10, 40, 50), score=0.9, confirmed=True, label="person"):
    return Track(tid, label, box, score, 0.0, 0.0, 3, confirmed, True)


def cam(**kw):
    return CameraConfig(id="cam", source="0", **kw)


ZONE = {"name": "yard", "polygon": SQUARE}


@pytest.mark.parametrize(
    ("zone", "steps", "expect"),
    [
        # (t, box) steps -> zones after each step
        ({}, [(0, (30, 10, 40, 50)), (1, (70, 10, 80, 90))], [("yard",), ()]),
        ({"inertia_s": 1.0}, [(0, (30, 10, 40, 50)), (0.5, (30, 10, 40, 50)),
                              (1.0, (30, 10, 40, 50))], [(), (), ("yard",)]),
        ({"labels": ["car"]}, [(0, (30, 10, 40, 50))], [()]),
    ],
)  # fmt: skip
def test_zone_membership(zone, steps, expect):
    scene = CameraScene(cam(zones=[ZoneConfig(**{**ZONE, **zone})]))
    got = [scene.annotate([track(box=b)], t, W, H)[0].zones for t, b in steps]
    assert got == expect


def test_loitering_entered_zones_and_required_zone_gate():
    zones = [ZoneConfig(**ZONE, loitering_s=2.0),
             ZoneConfig(name="lane", polygon=[(0.7, 0.7), (1, 0.7), (1, 1), (0.7, 1)])]  # fmt: skip
    scene = CameraScene(cam(zones=zones, required_zones=["yard"]))
    out = scene.annotate([track(box=(80, 10, 90, 90))], 0.0, W, H)[0]
    assert out.zones == ("lane",)
    assert not out.confirmed  # not yet in the required zone: no event
    out = scene.annotate([track(box=(30, 10, 40, 50))], 1.0, W, H)[0]
    assert out.confirmed
    assert out.entered_zones == ("lane", "yard")
    assert out.loitering == ()
    out = scene.annotate([track(box=(30, 10, 40, 50))], 3.0, W, H)[0]
    assert out.loitering == ("yard",)
    out = scene.annotate([track(box=(80, 10, 90, 90))], 4.0, W, H)[0]
    assert out.confirmed  # once entered, the visit is reported to its end
    assert out.zones == ("lane",)


@pytest.mark.parametrize(("scores", "passes"), [([0.9, 0.9, 0.2], True), ([0.3, 0.9, 0.3], False)])
def test_min_median_score_before_new(scores, passes):
    scene = CameraScene(cam(filters={"person": ObjectFilterConfig(min_median_score=0.5)}))
    outs = [scene.annotate([track(score=s, confirmed=i == 2)], i, W, H)[0]
            for i, s in enumerate(scores)]  # fmt: skip
    assert outs[-1].confirmed is passes


def test_zone_changes_are_updates_at_once():
    b = EventBuilder("cam", update_interval_s=60, min_move=0.9, snapshot_gain=10)
    img = np.zeros((H, W, 3), np.uint8)
    scene = CameraScene(cam(zones=[ZoneConfig(**ZONE)]))
    kinds = []
    for i, box in enumerate([(70, 10, 80, 90)] * 2 + [(30, 10, 40, 50)] * 2 + [(70, 10, 80, 90)]):
        f = Frame("cam", i, i * 0.2, 1.7e9 + i * 0.2, img)
        for em in b.update(scene.annotate([track(box=box)], f.ts, W, H), f):
            b.commit(em)  # the sink stored it
            kinds.append((em.event.type, em.event.zones, em.event.entered_zones))
    for em in b.close():
        b.commit(em)
        kinds.append((em.event.type, em.event.zones, em.event.entered_zones))
    assert kinds == [
        (EventType.NEW, (), ()),
        (EventType.UPDATE, ("yard",), ("yard",)),
        (EventType.UPDATE, (), ("yard",)),
        (EventType.END, (), ("yard",)),
    ]


@pytest.mark.parametrize(
    ("tiles", "ok"), [([2, 1], True), ([3, 2], True), ([0, 1], False), ([9, 1], False)]
)
def test_tiles_config(tmp_path, capsys, tiles, ok):
    cfg = {"node_id": "n", "commune_id": "c", "cameras": [{"id": "cam", "source": "0",
           "tiles": tiles}]}  # fmt: skip
    path = tmp_path / "a.yaml"
    path.write_text(json.dumps(cfg))
    rc = main(["check-config", str(path)])
    if ok:
        assert "cameras.0.tiles" not in capsys.readouterr().err
    else:
        assert rc == 2
        assert "cameras.0.tiles" in capsys.readouterr().err
