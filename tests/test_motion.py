"""The motion detector, regions and the gate: pure logic, table-driven, on synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest

from agent.domain import Track
from agent.vision.gate import GateParams, Reason, decide, reason
from agent.vision.motion import MotionDetector, MotionParams, MotionResult
from agent.vision.regions import Region, region_for

W, H = 640, 360


def scene(seed: int = 0) -> np.ndarray:
    """A textured still background (a fixed pattern plus a little sensor noise per frame)."""
    base = np.random.default_rng(42).integers(60, 200, (H // 8, W // 8, 3), dtype=np.uint8)
    image = np.kron(base, np.ones((8, 8, 1), np.uint8))
    noise = np.random.default_rng(seed).normal(0, 2, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def with_square(image: np.ndarray, x: int, y: int, side: int = 40) -> np.ndarray:
    out = image.copy()
    out[y : y + side, x : x + side] = (250, 250, 250)
    return out


def play(md: MotionDetector, frames: list[np.ndarray], fps: float = 10.0) -> list[MotionResult]:
    return [md.update(f, i / fps) for i, f in enumerate(frames)]


def test_a_still_scene_has_no_motion_after_calibration():
    results = play(MotionDetector(MotionParams()), [scene(i) for i in range(50)])
    assert results[0].calibrating
    assert not any(r.motion for r in results)


def test_a_moving_square_is_boxed_in_full_frame_pixels():
    frames = [scene(i) for i in range(20)]
    frames += [with_square(scene(20 + i), 300 + 10 * i, 150) for i in range(5)]
    results = play(MotionDetector(MotionParams()), frames)
    last = results[-1]
    assert last.motion
    x1, y1, x2, y2 = last.boxes[0]
    assert 300 <= x1 <= 345
    assert 380 <= x2 <= 400
    assert y1 <= 150
    assert y2 >= 190


def test_motion_inside_a_mask_is_ignored():
    mask = ((0.4, 0.3), (0.8, 0.3), (0.8, 0.7), (0.4, 0.7))
    frames = [scene(i) for i in range(20)]
    frames += [with_square(scene(20 + i), 300 + 10 * i, 150) for i in range(5)]
    masked = play(MotionDetector(MotionParams(masks=(mask,))), frames)
    assert not any(r.motion for r in masked)


def test_a_global_light_change_recalibrates_instead_of_reporting_motion():
    frames = [scene(i) for i in range(20)]
    lamp = np.linspace(0.3, 1.6, W)[None, :, None]  # a lamp on one side, not a uniform gain
    frames += [np.clip(scene(20 + i) * lamp, 0, 255).astype(np.uint8) for i in range(30)]
    results = play(MotionDetector(MotionParams(recalibrate_s=1.0)), frames)
    assert results[20].calibrating
    assert results[20].recalibrated
    assert not results[20].motion
    assert results[20].changed > 0.4
    assert not any(r.motion for r in results)
    assert not results[-1].calibrating


@pytest.mark.parametrize("fps", [5.0, 10.0, 25.0])
def test_same_frames_same_answer_by_timestamps(fps):
    frames = [scene(i) for i in range(40)] + [with_square(scene(40), 100, 100)]
    a = play(MotionDetector(MotionParams()), frames, fps)
    b = play(MotionDetector(MotionParams()), frames, fps)
    assert a == b
    assert a[-1].motion


def test_time_going_backwards_restarts_calibration():
    md = MotionDetector(MotionParams())
    for i in range(20):
        md.update(scene(i), i / 10)
    assert md.update(with_square(scene(21), 100, 100), 0.0).calibrating


def test_an_invalid_mask_is_refused_by_the_motion_params():
    with pytest.raises(ValueError, match=r"masks\[0\]: .*outside the frame"):
        MotionParams(masks=(((0.0, 0.0), (1.5, 0.0), (0.0, 1.0)),))


@pytest.mark.parametrize(
    ("boxes", "frame", "min_side", "expected"),
    [
        ([], (1920, 1080), 416, None),
        ([(100, 100, 140, 200)], (1920, 1080), 416, Region(0, 0, 416, 416)),
        ([(1000, 500, 1040, 600)], (1920, 1080), 416, Region(812, 342, 1228, 758)),
        ([(1880, 1000, 1910, 1070)], (1920, 1080), 416, Region(1504, 664, 1920, 1080)),
        ([(100, 100, 140, 200), (1500, 800, 1600, 1000)], (1920, 1080), 416, None),
        ([(300, 100, 340, 200)], (768, 432), 416, None),  # crop > 40% of a small frame
        ([(400, 200, 1100, 900)], (1920, 1080), 416, None),  # big motion: whole frame
    ],
)
def test_region_for(boxes, frame, min_side, expected):
    assert region_for(boxes, frame, min_side) == expected


def track(box, confirmed=True, last_ts=9.9) -> Track:
    return Track(1, "person", box, 0.9, 0.0, last_ts, 3 if confirmed else 1, confirmed, True)


def moved(*boxes) -> MotionResult:
    return MotionResult(10.0, tuple(boxes), 0.01, False)


STILL = MotionResult(10.0, (), 0.0, False)
PERSON = (100.0, 100.0, 200.0, 300.0)


@pytest.mark.parametrize(
    ("motion", "tracks", "last", "expected"),
    [
        (STILL, [], None, Reason.START),
        (STILL, [], 9.9, None),
        (STILL, [], 10.0 - 30.0, Reason.REFRESH),
        (moved((500, 100, 540, 180)), [], 9.9, Reason.MOTION),
        (moved((120, 150, 180, 250)), [track(PERSON)], 9.9, None),  # explained by the track
        (moved((120, 150, 180, 250)), [track(PERSON)], 8.0, Reason.CONFIRM),
        # a track unseen for 3 s explains nothing: it may be leaving, someone may come in
        (moved((120, 150, 180, 250)), [track(PERSON, last_ts=7.0)], 9.9, Reason.MOTION),
        (moved((500, 100, 540, 180)), [track(PERSON)], 9.9, Reason.MOTION),  # something new
        (STILL, [track(PERSON)], 9.0, None),
        (STILL, [track(PERSON)], 8.5, Reason.CONFIRM),  # standing still: still confirmed
        (STILL, [track(PERSON, confirmed=False)], 9.9, Reason.TENTATIVE),
    ],
)
def test_gate_reasons(motion, tracks, last, expected):
    assert reason(GateParams(), 10.0, motion, tracks, last) == expected


def test_gate_region_covers_motion_and_tracks_and_refresh_is_whole_frame():
    params = GateParams()
    d = decide(params, 10.0, moved((1500, 800, 1520, 840)), [], 9.9, (1920, 1080), 416)
    assert d.reason is Reason.MOTION
    assert d.region is not None
    assert d.region.x1 <= 1500
    assert d.region.x2 >= 1520
    d = decide(params, 10.0, STILL, [], -30.0, (1920, 1080), 416)
    assert d.reason is Reason.REFRESH
    assert d.region is None
    no_regions = GateParams(regions=False)
    d = decide(no_regions, 10.0, moved((1500, 800, 1520, 840)), [], 9.9, (1920, 1080), 416)
    assert d.run
    assert d.region is None


def test_a_sudden_change_of_most_of_the_picture_is_looked_at_once():
    cut = MotionResult(10.0, (), 0.6, True, recalibrated=True)
    assert reason(GateParams(), 10.0, cut, [], 9.9) is Reason.REFRESH
    assert decide(GateParams(), 10.0, cut, [], 9.9, (1920, 1080), 416).region is None
