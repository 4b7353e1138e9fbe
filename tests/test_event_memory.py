"""The event builder's memory is bounded: it keeps each track's best view as a small JPEG at
the snapshot width, not the whole frame, and the snapshots rendered from it still show the
right picture with the box in the right place."""

from __future__ import annotations

import gc
import tracemalloc
from functools import cache

import cv2
import numpy as np
import pytest

from agent.domain import Frame, SnapshotRequest, Track
from agent.vision.events import EventBuilder
from agent.vision.snapshot import render
from tests.conftest import MEDIA

HD_CLIP = MEDIA / "degirum_TrafficHD_short.mp4"  # real 1080p traffic footage, 20 frames
MiB = 2**20


@cache
def hd_frames() -> tuple[np.ndarray, ...]:
    cap = cv2.VideoCapture(str(HD_CLIP))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    assert len(frames) >= 10
    assert frames[0].shape == (1080, 1920, 3)
    return tuple(frames)


def picture(i: int, width: int, height: int) -> np.ndarray:
    image = hd_frames()[i % len(hd_frames())]
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def car_box(j: int, width: int, height: int) -> tuple[float, float, float, float]:
    """Car ``j`` parked in a grid cell of its own."""
    col, row = j % 10, j // 10 % 10
    cw, ch = width / 10, height / 10
    return (col * cw + 4, row * ch + 4, (col + 1) * cw - 4, (row + 1) * ch - 4)


def parked(j: int, i: int, width: int, height: int) -> Track:
    """Car ``j`` on frame ``i``: best seen on the frame it arrived (``i == j``), then duller."""
    score = 0.9 if i == j else 0.6
    return Track(j + 1, "car", car_box(j, width, height), score, j * 0.2, i * 0.2,
                 i - j + 1, True, True)  # fmt: skip


def park_cars(builder: EventBuilder, cars: int, width: int, height: int) -> int:
    """Car ``j`` arrives on frame ``j`` and stays: each car's best view is a different frame
    (the worst case). Returns the snapshots requested; nothing of the input is kept here."""
    snapshots = 0
    for i in range(cars):
        frame = Frame("cam", i, i * 0.2, 1_700_000_000 + i * 0.2, picture(i, width, height))
        emissions = builder.update([parked(j, i, width, height) for j in range(i + 1)], frame)
        for emission in emissions:
            builder.commit(emission)  # the sink stored it
            snapshots += emission.snapshot is not None
    return snapshots


@pytest.mark.parametrize(
    ("case", "width", "height", "cars", "snapshots", "limit_mib"),
    [
        ("30 parked cars at 1080p", 1920, 1080, 30, True, 4.0),
        ("30 parked cars at 720p", 1280, 720, 30, True, 4.0),
        ("100 tracks at 1080p", 1920, 1080, 100, True, 12.0),
        ("30 parked cars at 1080p, snapshots off", 1920, 1080, 30, False, 0.25),
    ],
)
def test_the_builder_holds_small_views_not_frames(case, width, height, cars, snapshots,
                                                  limit_mib):  # fmt: skip
    hd_frames()  # decoded before measuring
    builder = EventBuilder("cam", update_interval_s=10.0, min_move=0.25, snapshot_gain=0.1,
                           snapshots=snapshots)  # fmt: skip
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        requested = park_cars(builder, cars, width, height)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    whole_frames = cars * width * height * 3  # what keeping each best frame would hold
    print(f"{case}: {held / MiB:.2f} MiB held (whole frames: {whole_frames / MiB:.0f} MiB)")
    assert requested == (cars if snapshots else 0)  # every car is an open event
    assert held < limit_mib * MiB
    assert held < whole_frames / 20
    assert len(builder.close()) == cars  # the events are all still there


def green_mask(image: np.ndarray) -> np.ndarray:
    b, g, r = (image[..., k].astype(int) for k in range(3))
    return (g > 150) & (b < 90) & (r < 90)


def test_a_snapshot_from_the_kept_view_looks_like_one_from_the_whole_frame():
    width, height = 1920, 1080
    image = picture(3, width, height)
    box = (700.0, 300.0, 1100.0, 900.0)
    frame = Frame("cam", 3, 0.6, 1_700_000_000.6, image)
    builder = EventBuilder("cam", update_interval_s=10.0, min_move=0.25, snapshot_gain=0.1)
    track = Track(1, "person", box, 0.87, 0.0, 0.6, 3, True, True)
    [emission] = builder.update([track], frame)
    assert emission.snapshot is not None
    request = emission.snapshot
    assert request.frame.width <= 640  # only the small view was kept
    kept = cv2.imdecode(np.frombuffer(render(request, max_width=640, quality=70), np.uint8), 1)
    whole = SnapshotRequest(request.event_id, frame, box, "person", 0.87)  # as before
    old = cv2.imdecode(np.frombuffer(render(whole, max_width=640, quality=70), np.uint8), 1)
    assert kept.shape == old.shape == (360, 640, 3)
    # the same picture: outside the box and its caption the two JPEGs agree closely
    outside = np.ones((360, 640), bool)
    outside[80:320, 220:380] = False  # the box (700..1100 x 300..900 scaled by 1/3) + caption
    diff = np.abs(kept.astype(int) - old.astype(int))[outside]
    assert diff.mean() < 3.0
    # the box is drawn where it belongs: green along its four edges, at 1/3 scale
    plain = cv2.resize(image, (640, 360), interpolation=cv2.INTER_AREA)
    green = green_mask(kept) & ~green_mask(plain)  # green the drawing added
    x1, y1, x2, y2 = (round(v / 3) for v in box)
    assert green[y1 + 20 : y2 - 20, x1 - 1 : x1 + 2].any(axis=1).mean() > 0.9  # left edge
    assert green[y1 + 20 : y2 - 20, x2 - 1 : x2 + 2].any(axis=1).mean() > 0.9  # right edge
    assert green[y2 - 1 : y2 + 2, x1 + 10 : x2 - 10].any(axis=0).mean() > 0.9  # bottom edge
    assert not green[:, : x1 - 3].any()
    assert not green[y1 + 1 :, x2 + 3 :].any()  # (the caption may overhang above the box)
    assert not green[y2 + 3 :, :].any()
