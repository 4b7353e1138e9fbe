"""Pure logic: the tracker and the event rules, driven by synthetic timestamps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agent.domain import COCO_LABELS, Detections, EndReason, EventType, Frame, OpenVisit
from agent.vision.events import EventBuilder, moved, normalise, restart_end, snapshot_quality
from agent.vision.tracker import Tracker, greedy_match, iou_matrix, slope

W, H = 640, 480
IMAGE = np.zeros((H, W, 3), np.uint8)


def dets(*items: tuple[str, tuple[float, float, float, float], float]) -> Detections:
    if not items:
        return Detections.empty()
    return Detections(
        np.array([b for _, b, _ in items], np.float32),
        np.array([s for _, _, s in items], np.float32),
        np.array([COCO_LABELS.index(lab) for lab, _, _ in items], np.int64),
    )


def frame(i: int, t: float) -> Frame:
    return Frame("cam", i, t, 1_700_000_000.0 + t, IMAGE)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (0, 0, 5, 5), 0.25),
    ],
)
def test_iou(a, b, expected):
    got = iou_matrix(np.array([a], float), np.array([b], float))
    assert got[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("scores", "min_score", "pairs"),
    [
        ([[0.9, 0.1], [0.8, 0.7]], 0.3, [(0, 0), (1, 1)]),
        ([[0.9, 0.95], [0.1, 0.2]], 0.3, [(0, 1)]),
        ([[0.1]], 0.3, []),
        ([[0.5, 0.6]], 0.3, [(0, 1)]),
    ],
)
def test_greedy_match(scores, min_score, pairs):
    got, _, _ = greedy_match(np.array(scores, float), min_score)
    assert got == pairs


def make_tracker(**kw) -> Tracker:
    args = {"iou_match": 0.2, "min_hits": 3, "max_lost_s": 2.0, "tentative_lost_s": 0.5}
    return Tracker(**{**args, **kw})


def run(tracker: Tracker, seq, fps: float = 5.0):
    """Feed one Detections per step; return the tracks after each step."""
    return [tracker.update(d, i / fps) for i, d in enumerate(seq)]


PERSON = ("person", (100, 100, 200, 300), 0.8)


def walking(x0: float, step: float, n: int):
    return [dets(("person", (x0 + k * step, 100, x0 + k * step + 100, 300), 0.8)) for k in range(n)]


@pytest.mark.parametrize(
    ("name", "seq", "ids", "confirmed_at_end"),
    [
        ("steady object is one track", [dets(PERSON)] * 10, {1}, True),
        ("needs min_hits to confirm", [dets(PERSON)] * 2, {1}, False),
        ("one missed frame keeps the id",
         [dets(PERSON)] * 4 + [dets()] + [dets(PERSON)] * 3, {1}, True),
        ("slow walk keeps the id", walking(0, 20, 15), {1}, True),
        ("fast walk kept by centre fallback", walking(0, 70, 8), {1}, True),
        ("two apart objects are two tracks",
         [dets(PERSON, ("car", (400, 300, 600, 460), 0.9))] * 4, {1, 2}, True),
        ("label votes: car/truck flip is one track",
         [dets(("car", (300, 200, 500, 400), 0.7)), dets(("truck", (302, 200, 502, 400), 0.6))] * 3,
         {1}, True),
    ],
)  # fmt: skip
def test_tracker_identity(name, seq, ids, confirmed_at_end):
    out = run(make_tracker(), seq)
    seen = {t.track_id for step in out for t in step}
    assert seen == ids, name
    assert all(t.confirmed == confirmed_at_end for t in out[-1]), name


def test_tentative_flicker_is_dropped_and_confirmed_survives_gap():
    tr = make_tracker()
    # a single-frame flicker, then nothing for 0.6 s (> tentative_lost_s): gone
    assert tr.update(dets(PERSON), 0.0)
    assert tr.update(dets(), 0.6) == []
    # a confirmed track survives a 1.8 s gap (< max_lost_s) and keeps its id
    for i in range(3):
        tr.update(dets(PERSON), 1.0 + i * 0.2)
    (t1,) = tr.update(dets(), 3.2)
    assert t1.confirmed
    assert not t1.seen_now
    (t2,) = tr.update(dets(PERSON), 3.2 + 1.5)
    assert t2.track_id == t1.track_id
    assert t2.seen_now
    # ... but not a gap longer than max_lost_s
    assert tr.update(dets(), 4.7 + 2.01) == []


def test_person_and_motorcycle_never_match_each_other():
    tr = make_tracker()
    out = run(tr, [dets(PERSON, ("motorcycle", (105, 150, 205, 310), 0.8))] * 4)
    assert {t.label for t in out[-1]} == {"person", "motorcycle"}
    assert len({t.track_id for t in out[-1]}) == 2


def test_timestamps_must_not_go_backwards():
    tr = make_tracker()
    tr.update(dets(), 1.0)
    with pytest.raises(ValueError, match="backwards"):
        tr.update(dets(), 0.5)


# ---------------------------------------------------------------- event rules


def builder(**kw) -> EventBuilder:
    ids = (f"ev{i}" for i in itertools.count(1))
    args = {"update_interval_s": 5.0, "min_move": 0.2, "snapshot_gain": 0.1}
    return EventBuilder("cam", new_id=lambda: next(ids), **{**args, **kw})


def play(seq, *, fps=5.0, tracker=None, eb=None, close=True):
    """Run detections through tracker and builder; return the emitted events in order."""
    tracker = tracker or make_tracker()
    eb = eb or builder()
    events = []
    for i, d in enumerate(seq):
        f = frame(i, i / fps)
        events += commit(eb, eb.update(tracker.update(d, f.ts), f))
    if close:
        events += commit(eb, eb.close())
    return events


def commit(eb: EventBuilder, emissions, fail=lambda em: False):
    """What a sink does: store each emission (unless ``fail`` says it failed), then commit."""
    stored = [em for em in emissions if not fail(em)]
    for em in stored:
        eb.commit(em)
    return stored


def kinds(emissions):
    return [(e.event.event_id, e.event.type.value) for e in emissions]


@pytest.mark.parametrize(
    ("name", "seq", "expected"),
    [
        ("nothing", [dets()] * 20, []),
        ("flicker of two frames is no event", [dets(PERSON)] * 2 + [dets()] * 20, []),
        ("a visit is new then end", [dets(PERSON)] * 10 + [dets()] * 20,
         [("ev1", "new"), ("ev1", "end")]),
        ("standing still for 5 minutes is one event, no updates",
         [dets(PERSON)] * (5 * 60 * 5) + [dets()] * 20, [("ev1", "new"), ("ev1", "end")]),
        ("flicker inside a visit does not split it",
         ([dets(PERSON)] * 5 + [dets()] * 2) * 6 + [dets()] * 20,
         [("ev1", "new"), ("ev1", "end")]),
        ("two visits are two events",
         [dets(PERSON)] * 10 + [dets()] * 20 + [dets(PERSON)] * 10 + [dets()] * 20,
         [("ev1", "new"), ("ev1", "end"), ("ev2", "new"), ("ev2", "end")]),
        # 0.2 diagonals is 181 px at 640x480: 46 frames at 4 px a frame, i.e. t=9.2 s and 18.4 s
        ("a long walk across the frame sends updates when it moved enough",
         walking(0, 4, 135) + [dets()] * 20,
         [("ev1", "new"), ("ev1", "update"), ("ev1", "update"), ("ev1", "end")]),
    ],
)  # fmt: skip
def test_event_rules(name, seq, expected):
    assert kinds(play(seq)) == expected, name


def test_updates_are_rate_limited():
    # moves 0.2 diagonals every 1.3 s, far more than min_move: updates come every 5 s at most
    out = play(walking(0, 35, 16), eb=builder(update_interval_s=1.0, min_move=0.05))
    times = [e.event.ts for e in out if e.event.type is EventType.UPDATE]
    assert len(times) >= 2
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
    out = play(walking(0, 35, 16), eb=builder(update_interval_s=5.0, min_move=0.05))
    assert len([e for e in out if e.event.type is EventType.UPDATE]) == 0  # 3.2 s < 5 s


def test_new_event_fields_and_end_timestamps():
    out = play([dets(PERSON)] * 10 + [dets()] * 20)
    new, end = out[0].event, out[1].event
    assert new.type is EventType.NEW
    assert new.rev == 0
    assert new.end_ts is None
    assert new.box == pytest.approx((100 / W, 100 / H, 200 / W, 300 / H))
    assert new.start_ts == pytest.approx(1_700_000_000.0)  # first detection, not confirmation
    assert new.has_snapshot
    assert out[0].snapshot is not None
    assert out[0].snapshot.event_id == "ev1"
    assert end.type is EventType.END
    assert end.rev == 1
    assert end.id == "ev1-1"
    assert new.id == "ev1-0"
    assert end.end_ts == pytest.approx(1_700_000_000.0 + 9 / 5)  # last frame it was seen
    assert not end.has_snapshot  # nothing better than what was already sent


def test_better_snapshot_sent_at_end_and_snapshots_can_be_disabled():
    small = ("person", (100, 100, 150, 200), 0.6)
    big = ("person", (100, 100, 220, 340), 0.9)
    out = play([dets(small)] * 4 + [dets(big)] * 2 + [dets()] * 20)
    assert kinds(out) == [("ev1", "new"), ("ev1", "end")]
    assert out[1].event.has_snapshot
    assert out[1].snapshot is not None
    assert out[1].snapshot.score == pytest.approx(0.9)
    out = play([dets(small)] * 4 + [dets()] * 20, eb=builder(snapshots=False))
    assert [e.event.has_snapshot for e in out] == [False, False]
    assert all(e.snapshot is None for e in out)


@pytest.mark.parametrize(
    ("box", "score", "cut_ratio"),
    [((100, 100, 200, 300), 0.8, 1.0), ((0, 100, 100, 300), 0.8, 0.5)],
)
def test_snapshot_quality_penalises_edge_cuts(box, score, cut_ratio):
    inside = snapshot_quality((100, 100, 200, 300), score, W, H)
    assert snapshot_quality(box, score, W, H) == pytest.approx(inside * cut_ratio)


@pytest.mark.parametrize(
    ("a", "b", "dist"),
    [((0, 0, 0.1, 0.1), (0, 0, 0.1, 0.1), 0.0), ((0, 0, 0, 0), (1, 1, 1, 1), 1.0)],
)
def test_moved(a, b, dist):
    assert moved(a, b) == pytest.approx(dist)


def test_normalise_clips():
    assert normalise((-5, 10, 700, 480), W, H) == (0.0, 10 / H, 1.0, 1.0)


# -- motion model and the ByteTrack second pass ------------------------------------------------


def box_at(x: float, y: float = 100, w: float = 60, h: float = 150):
    return (x, y, x + w, y + h)


def test_low_score_detections_keep_a_track_alive_but_never_start_one():
    tr = make_tracker(high_score=0.5, max_lost_s=0.5)
    for i in range(3):
        tr.update(dets(("person", box_at(100), 0.8)), i * 0.2)
    # half hidden for 2 s: only low-score detections, the same track
    for i in range(3, 13):
        (t,) = tr.update(dets(("person", box_at(100 + (i - 2) * 3), 0.2)), i * 0.2)
        assert t.track_id == 1
        assert t.seen_now
    # a low-score detection elsewhere never becomes a track
    out = tr.update(dets(("person", box_at(100 + 33), 0.2), ("person", box_at(500), 0.3)), 2.6)
    assert [t.track_id for t in out] == [1]
    out = tr.update(dets(("person", box_at(500), 0.3)), 3.4)
    assert out == []  # the first one left, and low scores start nothing


@pytest.mark.parametrize(
    ("name", "seq", "ids"),
    [
        # a car slows to a stop at a junction for 3 s (3 s unseen less than max_lost_s... seen
        # at low score), then drives off: one track
        ("stops, waits, turns",
         [("car", box_at(50 + 40 * k, 200, 120, 80), 0.8) for k in range(5)]
         + [("car", box_at(210, 200, 120, 80), 0.3)] * 15
         + [("car", box_at(210 + 5 * k, 200 - 30 * k, 90, 100), 0.8) for k in range(6)],
         {1}),
        # two people cross: the motion model keeps each on its own side
        ("two people cross",
         None, {1, 2}),
    ],
)  # fmt: skip
def test_tracker_motion_table(name, seq, ids):
    tr = make_tracker(high_score=0.5)
    if seq is None:  # two people walking at each other, overlapping in the middle
        frames = [
            dets(("person", box_at(100 + 25 * k), 0.9), ("person", box_at(500 - 25 * k), 0.9))
            for k in range(17)
        ]
    else:
        frames = [dets(d) for d in seq]
    out = run(tr, frames)
    assert {t.track_id for step in out for t in step} == ids, name
    if seq is None:  # identities kept through the crossing: track 1 ends on the right
        last = {t.track_id: t.box[0] for t in out[-1]}
        assert last[1] > last[2], name


def test_prediction_bridges_a_gap_of_a_fast_object():
    """A car unseen for 0.6 s while moving 100 px per 0.2 s is found where it went (without
    the prediction neither IoU nor the centre distance would match it)."""
    tr = make_tracker(high_score=0.5, max_centre_jump=0.2)
    for k in range(4):
        tr.update(dets(("car", box_at(100 * k, 200, 200, 80), 0.9)), k * 0.2)
    tr.update(dets(), 0.8)
    tr.update(dets(), 1.0)
    (t,) = tr.update(dets(("car", box_at(600, 200, 200, 80), 0.9)), 1.2)
    assert t.track_id == 1


def test_a_stopped_object_predicts_in_place():
    tr = make_tracker(high_score=0.5, max_centre_jump=0.1)
    for k in range(6):
        tr.update(dets(("car", box_at(100 + 20 * min(k, 3), 200, 120, 80), 0.9)), k * 0.2)
    # stopped for 3 detections: velocity decayed; seen again in place after 1.5 s
    tr.update(dets(), 1.4)
    (t,) = tr.update(dets(("car", box_at(160, 200, 120, 80), 0.9)), 2.6)
    assert t.track_id == 1


# ---------------------------------------------------------------- atomic emissions


def play_failing(seq, fail, *, fps=5.0, eb=None):
    """Like ``play``, but the sink fails where ``fail(emission, step)`` says so."""
    tracker, eb = make_tracker(), eb or builder()
    stored = []
    for i, d in enumerate(seq):
        f = frame(i, i / fps)
        stored += commit(eb, eb.update(tracker.update(d, f.ts), f), lambda em, i=i: fail(em, i))
    stored += commit(eb, eb.close())
    return stored


def assert_whole_visits(stored):
    """Every visit starts with its new, revs count up by one, at most one end, last."""
    by_visit: dict[str, list] = {}
    for em in stored:
        by_visit.setdefault(em.event.event_id, []).append(em.event)
    for evs in by_visit.values():
        assert evs[0].type is EventType.NEW
        assert [e.rev for e in evs] == list(range(len(evs)))
        assert [e.type is EventType.END for e in evs].count(True) <= 1
        assert evs[-1].type is EventType.END
        assert len({e.id for e in evs}) == len(evs)


LONG_WALK = walking(0, 4, 135) + [dets()] * 20


@pytest.mark.parametrize(
    ("name", "fail", "expected"),
    [
        ("the first new fails: proposed again, one visit",
         lambda em, i: em.event.type is EventType.NEW and i < 5,
         ["new", "update", "update", "end"]),
        ("every update fails for a while: the change is sent later, same rev",
         lambda em, i: em.event.type is EventType.UPDATE and i < 80,
         ["new", "update", "update", "end"]),
        ("the end fails for ten frames: retried until stored",
         lambda em, i: em.event.type is EventType.END and i < 150,
         ["new", "update", "update", "end"]),
        ("the sink is down for the whole visit: nothing, not even an end",
         lambda em, i: True, []),
    ],
)  # fmt: skip
def test_a_failed_emission_never_breaks_a_visit(name, fail, expected):
    stored = play_failing(LONG_WALK, fail)
    assert [em.event.type.value for em in stored] == expected, name
    assert_whole_visits(stored)


def test_random_sink_failures_never_give_an_update_or_end_without_its_new():
    rng = np.random.default_rng(7)
    fails = rng.random(2000) < 0.3
    seq = (walking(0, 4, 135) + [dets()] * 20 + [dets(PERSON)] * 30 + [dets()] * 25) * 3
    stored = play_failing(seq, lambda em, i: bool(fails[i]))
    assert len({em.event.event_id for em in stored}) == 6
    assert_whole_visits(stored)


def test_visit_state_rides_on_each_emission_and_end_reasons():
    out = play([dets(PERSON)] * 10 + [dets()] * 20, close=False)
    new, end = out
    assert new.visit is not None
    assert (new.visit.event_id, new.visit.rev, new.visit.label) == ("ev1", 0, "person")
    assert new.visit.start_ts == new.event.start_ts
    assert end.visit is None
    assert end.event.end_reason is EndReason.TIMEOUT
    eb = builder()
    out = play([dets(PERSON)] * 10, eb=eb, close=False)
    (closed,) = commit(eb, eb.close(EndReason.SOURCE_FINISHED))
    assert closed.event.end_reason is EndReason.SOURCE_FINISHED
    assert eb.open_visits == 0


def test_restart_end_continues_the_committed_visit():
    visit = OpenVisit("ev9", "cam", "car", 100.0, 130.0, (0.1, 0.2, 0.3, 0.4), 0.8, 2)
    em = restart_end(visit)
    ev = em.event
    assert (ev.id, ev.rev, ev.type, ev.end_reason) == ("ev9-3", 3, EventType.END, EndReason.RESTART)
    assert (ev.start_ts, ev.end_ts, ev.ts) == (100.0, 130.0, 130.0)
    assert not ev.has_snapshot
    assert em.visit is None


def parked_and_mover(**kw):
    """A car parked for a second; a car enters and, one detection later, covers it (the parked
    car is not detected then). The mover's box overlaps the parked one by IoU 0.375, its own
    previous box by less than ``iou_match``."""
    tr = make_tracker(high_score=0.5, max_lost_s=4.0, **kw)
    parked = ("car", (300, 200, 400, 260), 0.8)
    for k in range(6):
        tr.update(dets(parked), k * 0.2)
    tr.update(dets(parked, ("car", (150, 180, 310, 280), 0.9)), 1.2)
    return {t.track_id: t for t in tr.update(dets(("car", (260, 180, 420, 280), 0.9)), 1.4)}


@pytest.mark.parametrize(("still_iou", "hijacked"), [(0.5, False), (0.0, True)])
def test_a_car_driving_past_a_parked_one_does_not_take_its_track(still_iou, hijacked):
    tracks = parked_and_mover(still_iou=still_iou)
    moved = tracks[1].box != (300.0, 200.0, 400.0, 260.0)
    assert moved is hijacked  # with the still rule the parked track stays where it is


@pytest.mark.parametrize(("duplicate_iou", "alive"), [(0.7, [2]), (1.0, [1, 2])])
def test_a_second_box_of_the_same_object_keeps_no_other_track_alive(duplicate_iou, alive):
    """A car also scored as a truck (same box, low score) is one object: its second box must
    not keep the track of a car hidden behind it alive (moving cars: the still rule aside)."""
    tr = make_tracker(high_score=0.5, max_lost_s=0.6, low_iou_match=0.3, still_iou=0.0,
                      duplicate_iou=duplicate_iou)  # fmt: skip
    hidden = ("car", (100, 100, 200, 160), 0.8)
    front = ("car", (150, 100, 250, 170), 0.9)
    for k in range(4):
        tr.update(dets(hidden, front), k * 0.2)
    for k in range(4, 10):  # only the front car, twice
        out = tr.update(dets(front, ("truck", (150, 100, 250, 170), 0.3)), k * 0.2)
    assert [t.track_id for t in out] == alive  # without the rule the hidden car lives on


@pytest.mark.parametrize(
    ("gap_s", "same_track"),
    [
        (1.0, True),  # a far jump between two detections at a low rate: the same object
        (3.0, False),  # someone new near where another was seen 3 s ago: a new track
    ],
)
def test_centre_fallback_only_bridges_short_gaps(gap_s, same_track):
    tr = Tracker(iou_match=0.2, min_hits=1, max_lost_s=4.0, centre_gap_s=2.0)
    (first,) = tr.update(dets(("person", (100, 100, 150, 250), 0.9)), 0.0)
    later = tr.update(dets(("person", (160, 100, 210, 250), 0.9)), gap_s)  # no overlap
    seen = [t for t in later if t.seen_now]
    assert len(seen) == 1
    assert (seen[0].track_id == first.track_id) is same_track


# ---------------------------------------------------------------- the same at any detect_fps


@pytest.mark.parametrize(
    ("name", "points", "expected"),
    [
        ("one point: no speed", [(0.0, (10, 10, 5, 5))], (0, 0, 0, 0)),
        ("two points", [(0.0, (10, 10, 5, 5)), (0.5, (20, 10, 5, 6))], (20, 0, 0, 2)),
        ("30 px/s at 10 fps", [(k / 10, (3 * k, 0, 9, 9)) for k in range(10)], (30, 0, 0, 0)),
        ("1 px jitter at 10 fps", [(k / 10, (k % 2, 0, 9, 9)) for k in range(10)], (0, 0, 0, 0)),
        ("same time twice", [(1.0, (0, 0, 1, 1)), (1.0, (9, 9, 1, 1))], (0, 0, 0, 0)),
    ],
)  # fmt: skip
def test_slope(name, points, expected):
    got = slope([(t, np.array(v, float)) for t, v in points])
    assert got == pytest.approx(np.array(expected, float), abs=1.0), name


@pytest.mark.parametrize("fps", [2.5, 5.0, 10.0])
def test_a_flicker_kept_up_by_faint_boxes_never_becomes_an_object(fps):
    """A tree trunk: a person-like box scored high once a second, faint in between. Faint
    boxes keep confirmed tracks alive, never tentative ones, so no rate makes it an object
    (kept alive by them, it would collect ``min_hits`` high boxes at any rate)."""
    tr = make_tracker(high_score=0.5, min_confirm_s=0.8)
    trunk = box_at(100)
    for k in range(int(6 * fps)):
        t = k / fps
        score = 0.6 if abs(t - round(t)) < 1e-9 else 0.3
        out = tr.update(dets(("person", trunk, score)), t)
        assert not any(tr_.confirmed for tr_ in out), (fps, t)


@pytest.mark.parametrize("fps", [2.5, 5.0, 10.0])
@pytest.mark.parametrize(
    ("own_box", "keeps_place"),
    [
        (0.4, True),  # its own box dips below high_score: it keeps that one
        (None, False),  # no box of its own at all: the nearest high box (centre fallback)
    ],
)
def test_a_parked_car_keeps_its_faint_box_over_its_neighbours_bright_one(fps, own_box, keeps_place):
    """Cars parked in a row, boxes jittering by a pixel: the first is tracked, its neighbour
    (overlapping it by IoU 0.27) only faintly detected. When the neighbour scores high and the
    first car's own box is faint, the first track stays on its car at any rate: pixel jitter
    is no speed, and a still track prefers its own faint box to a neighbour's bright one."""
    tr = make_tracker(high_score=0.5, max_lost_s=4.0)
    car = (284.0, 108.0, 309.0, 131.0)
    neighbour = (268.0, 99.0, 300.0, 128.0)
    n = int(3 * fps)
    for k in range(n):
        j = k % 2  # one pixel of jitter
        car_k = (car[0] + j, car[1], car[2] + j, car[3])
        tr.update(dets(("car", car_k, 0.6), ("car", neighbour, 0.3)), k / fps)
    frame_dets = [("car", neighbour, 0.55)]
    if own_box is not None:
        frame_dets.append(("car", car, own_box))
    out = {t.track_id: t for t in tr.update(dets(*frame_dets), n / fps)}
    stayed = out[1].box == pytest.approx(car)
    assert stayed is keeps_place
    assert (2 in out) is keeps_place  # the neighbour then gets a track of its own
