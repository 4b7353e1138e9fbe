"""A small multi-object tracker advanced by frame timestamps (no wall clock, no threads).

ByteTrack's idea on top of a constant-velocity motion model:

- every track predicts where its box is now (centre and size moving at its velocity for at
  most ``max_predict_s``). The velocity is the least-squares slope of the boxes seen in the
  last ``velocity_window_s``, not a difference of two frames: a box jittering by a pixel
  between frames is no speed at any ``detect_fps``, so a parked car stays still and its
  prediction does not slide onto the next car in the row; a stopped object has no velocity,
  so a car waiting at a junction stays where it stopped;
- pass 1: *high-score* detections (score >= the label's ``high_score``) are matched to the
  predicted boxes by IoU >= ``iou_match`` (``still_iou`` for a track that has stopped, slower
  than ``still_speed`` box diagonals per second: a car driving past a parked one, hiding it,
  does not take over its track), then what is left to *moving* tracks by nearest centre
  within ``max_centre_jump`` box diagonals (objects that moved far between two detections at
  a low ``detect_fps``);
- pass 2: *low-score* detections (below ``high_score``, as low as the detector returns them)
  keep the *confirmed* tracks still unmatched alive when they overlap them by IoU >=
  ``low_iou_match``: a person half hidden in a crowd, a car behind a pole. They never start a
  track and never keep a tentative one going (ByteTrack): a tree trunk scored high now and
  then would otherwise collect ``min_hits`` at a high ``detect_fps`` and not at a low one;
- pass 3: stopped tracks still unmatched take the nearest high-score box left. Only now: a
  parked car whose own box dipped below ``high_score`` for a frame keeps it (pass 2) rather
  than take the bright box of the car parked next to it;
- before the passes, a detection overlapping a better one of its group by IoU above
  ``duplicate_iou`` is dropped (one car scored as car and truck is one object);
- new tracks start only from unmatched high-score detections, and not from one lying mostly
  (``max_contained``) inside a tracked box of its group: detectors split big close objects
  (a pickup's cab and bed) into parts.

Tracks are tentative until they have ``min_hits`` high-score detections spanning at least
``min_confirm_s`` (the same time at any ``detect_fps``: parts of a big close object flicker for
a few frames at 10 fps, never for a second); a tentative track that
misses for ``tentative_lost_s`` is dropped (a flicker never becomes an object), a confirmed one
survives ``max_lost_s`` unseen (a missed detection or two never splits a visit).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.domain import BoxPx, Detections, Track

FloatArray = npt.NDArray[np.float64]


def _intersections(a: FloatArray, b: FloatArray) -> FloatArray:
    """The intersection area of every box in ``a`` [N,4] with every box in ``b`` [M,4]."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.asarray(np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None))


def _areas(boxes: FloatArray) -> FloatArray:
    return np.asarray((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of every box in ``a`` [N,4] with every box in ``b`` [M,4] (xyxy)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter = _intersections(a, b)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def containment(a: FloatArray, b: FloatArray) -> FloatArray:
    """The fraction of each box in ``a`` [N,4] that lies inside each box in ``b`` [M,4]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return np.asarray(_intersections(a, b) / np.maximum(_areas(a)[:, None], 1e-9))


def centre_distance(a: FloatArray, b: FloatArray) -> FloatArray:
    """Distance between box centres, in units of the larger box diagonal of each pair."""
    if len(a) == 0 or len(b) == 0:
        return np.full((len(a), len(b)), np.inf)
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    da = np.hypot(a[:, 2] - a[:, 0], a[:, 3] - a[:, 1])
    db = np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    dist = np.hypot(ca[:, None, 0] - cb[None, :, 0], ca[:, None, 1] - cb[None, :, 1])
    return np.asarray(dist / np.maximum(np.maximum(da[:, None], db[None, :]), 1e-9))


def greedy_match(
    score: FloatArray, min_score: float
) -> tuple[list[tuple[int, int]], set[int], set[int]]:
    """Pairs (row, col) picked greedily by highest score >= ``min_score``; rows/cols left over."""
    pairs: list[tuple[int, int]] = []
    rows, cols = set(range(score.shape[0])), set(range(score.shape[1]))
    if score.size:
        order = np.argsort(-score, axis=None)
        for flat in order:
            r, c = divmod(int(flat), score.shape[1])
            if score[r, c] < min_score:
                break
            if r in rows and c in cols:
                pairs.append((r, c))
                rows.discard(r)
                cols.discard(c)
    return pairs, rows, cols


def slope(points: Sequence[tuple[float, FloatArray]]) -> FloatArray:
    """The least-squares rate of change of the values over the times; zero for fewer than two
    distinct times."""
    ts = np.array([p[0] for p in points], dtype=np.float64)
    if len(ts) < 2 or np.ptp(ts) <= 0:
        return np.zeros(4)
    values = np.array([p[1] for p in points], dtype=np.float64)
    dt = ts - ts.mean()
    rate: FloatArray = (dt @ (values - values.mean(axis=0))) / float(dt @ dt)
    return rate


def to_cxcywh(box: FloatArray) -> FloatArray:
    x1, y1, x2, y2 = box
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


def to_xyxy(state: FloatArray) -> FloatArray:
    cx, cy, w, h = state
    w, h = max(w, 1.0), max(h, 1.0)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


@dataclass
class _State:
    track_id: int
    box: FloatArray
    score: float
    first_ts: float
    last_ts: float
    hits: int = 1
    votes: Counter[str] = field(default_factory=Counter)
    velocity: FloatArray = field(default_factory=lambda: np.zeros(4))
    seen: deque[tuple[float, FloatArray]] = field(default_factory=deque)  # (t, cx cy w h)
    confirmed: bool = False

    def __post_init__(self) -> None:
        if not self.seen:  # the velocity window starts with the first box
            self.seen.append((self.first_ts, to_cxcywh(self.box)))

    @property
    def label(self) -> str:
        return self.votes.most_common(1)[0][0]

    def predict(self, t: float, max_predict_s: float) -> FloatArray:
        """The box expected at ``t`` (constant velocity for at most ``max_predict_s``)."""
        dt = min(max(t - self.last_ts, 0.0), max_predict_s)
        return to_xyxy(to_cxcywh(self.box) + self.velocity * dt)

    def snapshot(self, confirmed: bool, seen_now: bool) -> Track:
        x1, y1, x2, y2 = (float(v) for v in self.box)
        box: BoxPx = (x1, y1, x2, y2)
        return Track(
            self.track_id, self.label, box, self.score, self.first_ts, self.last_ts,
            self.hits, confirmed, seen_now,
        )  # fmt: skip


class Tracker:
    """Turns per-frame :class:`Detections` into :class:`Track` snapshots.

    ``groups`` maps a label to the group it may be matched within (default: car, bus and truck
    share one, since detectors swap them between frames); a track's label is the most voted.
    ``high_score`` is the score from which a detection may start a track (``label_high_score``
    overrides it per label); detections below it only keep tracks alive.
    """

    def __init__(
        self,
        *,
        iou_match: float,
        min_hits: int,
        max_lost_s: float,
        tentative_lost_s: float = 1.0,
        max_centre_jump: float = 0.6,
        centre_gap_s: float = 2.0,
        groups: dict[str, str] | None = None,
        high_score: float = 0.0,
        label_high_score: Mapping[str, float] | None = None,
        low_iou_match: float = 0.3,
        velocity_window_s: float = 1.0,
        max_predict_s: float = 1.0,
        max_contained: float = 0.8,
        min_confirm_s: float = 0.0,
        still_speed: float = 0.15,
        still_iou: float = 0.5,
        duplicate_iou: float = 0.7,
    ) -> None:
        self.iou_match = iou_match
        self.min_hits = min_hits
        self.max_lost_s = max_lost_s
        self.tentative_lost_s = min(tentative_lost_s, max_lost_s)
        self.max_centre_jump = max_centre_jump
        self.centre_gap_s = centre_gap_s
        self.groups = groups if groups is not None else {"bus": "car", "truck": "car"}
        self.high_score = high_score
        self.label_high_score = dict(label_high_score or {})
        self.low_iou_match = low_iou_match
        self.velocity_window_s = velocity_window_s
        self.max_predict_s = max_predict_s
        self.max_contained = max_contained
        self.min_confirm_s = min_confirm_s
        self.still_speed = still_speed
        self.still_iou = still_iou
        self.duplicate_iou = duplicate_iou
        self._tracks: list[_State] = []
        self._next_id = 1
        self._last_t: float | None = None

    def update(self, dets: Detections, t: float) -> list[Track]:
        """Advance to time ``t`` with this frame's detections; the live tracks after it."""
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"timestamps must not go backwards: {t} < {self._last_t}")
        self._last_t = t
        seen: set[int] = set()
        for group in {self._group(dets.label(i)) for i in range(len(dets))} | {
            self._group(s.label) for s in self._tracks
        }:
            seen |= self._update_group(dets, t, group)
        self._expire(t)
        return [s.snapshot(self._confirmed(s), s.track_id in seen) for s in self._tracks]

    def _confirmed(self, s: _State) -> bool:
        if s.confirmed:
            return True
        s.confirmed = s.hits >= self.min_hits and s.last_ts - s.first_ts >= self.min_confirm_s
        return s.confirmed

    def _group(self, label: str) -> str:
        return self.groups.get(label, label)

    def _is_high(self, label: str, score: float) -> bool:
        return score >= self.label_high_score.get(label, self.high_score)

    def _update_group(self, dets: Detections, t: float, group: str) -> set[int]:
        d_idx = [i for i in range(len(dets)) if self._group(dets.label(i)) == group]
        tracks = [s for s in self._tracks if self._group(s.label) == group]
        if not d_idx:
            return set()
        d_idx = self._distinct(dets, d_idx)
        high = [i for i in d_idx if self._is_high(dets.label(i), float(dets.scores[i]))]
        low = [i for i in d_idx if i not in set(high)]
        predicted = np.array([s.predict(t, self.max_predict_s) for s in tracks]).reshape(-1, 4)
        xyxy = dets.xyxy.astype(np.float64)
        seen: set[int] = set()
        still = np.array([self._still(s) for s in tracks], dtype=bool)
        fresh = [t - s.last_ts <= self.centre_gap_s for s in tracks]

        def hit(r: int, i: int, *, vote: bool) -> None:
            self._hit(tracks[r], xyxy[i], float(dets.scores[i]), dets.label(i), t, vote=vote)
            seen.add(tracks[r].track_id)

        # pass 1: high-score detections by IoU, then moving tracks by nearest centre
        iou = self._still_gate(iou_matrix(predicted, xyxy[high]), still)
        pairs, t_left, d_left = greedy_match(iou, self.iou_match)
        moving = [r for r in sorted(t_left) if not still[r] and fresh[r]]
        pairs += self._centre_pass(predicted, xyxy[high], moving, d_left, t_left)
        for r, c in pairs:
            hit(r, high[c], vote=True)
        # pass 2: low-score detections keep the remaining confirmed tracks alive (IoU only)
        confirmed = sorted(r for r in t_left if tracks[r].confirmed)
        if low and confirmed:
            low_iou = self._still_gate(
                iou_matrix(predicted[confirmed], xyxy[low]), still[confirmed]
            )
            lp, _, _ = greedy_match(low_iou, self.low_iou_match)
            for r, c in lp:
                hit(confirmed[r], low[c], vote=False)
            t_left -= {confirmed[r] for r, _ in lp}
        # pass 3: a still track takes a nearby high-score box only if it has no faint box of its
        # own: a parked car whose detection dips below high_score for a frame must not take
        # the bright box of the car parked next to it
        parked = [r for r in sorted(t_left) if still[r] and fresh[r]]
        for r, c in self._centre_pass(predicted, xyxy[high], parked, d_left, t_left):
            hit(r, high[c], vote=True)
        # new tracks from the high-score detections nobody claimed, unless a part of a tracked
        # object (the cab of a pickup, the bed of it: detectors split big close objects)
        inside = containment(xyxy[high], predicted).max(axis=1, initial=0.0)
        for c in sorted(d_left):
            i = high[c]
            if inside[c] >= self.max_contained:
                continue
            state = _State(self._next_id, xyxy[i], float(dets.scores[i]), t, t)
            state.votes[dets.label(i)] += 1
            self._tracks.append(state)
            seen.add(state.track_id)
            self._next_id += 1
        return seen

    def _still(self, s: _State) -> bool:
        """A confirmed track that has stopped (a parked car, a person at a door)."""
        x1, y1, x2, y2 = s.box
        diag = max(float(np.hypot(x2 - x1, y2 - y1)), 1e-9)
        speed = float(np.hypot(s.velocity[0], s.velocity[1])) / diag
        return s.confirmed and speed < self.still_speed

    def _still_gate(self, iou: FloatArray, still: npt.NDArray[np.bool_]) -> FloatArray:
        """IoU with the rows of still tracks below ``still_iou`` zeroed."""
        iou[still] = np.where(iou[still] >= self.still_iou, iou[still], 0.0)
        return iou

    def _distinct(self, dets: Detections, idx: list[int]) -> list[int]:
        """``idx`` without detections overlapping a better one of the group by IoU above
        ``duplicate_iou``: a car also scored as a truck is one object, and its second box must
        not keep another (hidden) track alive."""
        order = sorted(idx, key=lambda i: -float(dets.scores[i]))
        boxes = dets.xyxy.astype(np.float64)
        kept: list[int] = []
        for i in order:
            if kept and iou_matrix(boxes[[i]], boxes[kept]).max() > self.duplicate_iou:
                continue
            kept.append(i)
        return sorted(kept)

    def _centre_pass(
        self,
        predicted: FloatArray,
        boxes: FloatArray,
        rows: list[int],
        d_left: set[int],
        t_left: set[int],
    ) -> list[tuple[int, int]]:
        """Tracks ``rows`` matched to the nearest unclaimed centre within ``max_centre_jump``
        box diagonals (removed from ``d_left`` and ``t_left``).

        It bridges a jump between two detections (a car at a low ``detect_fps``); only tracks
        seen in the last ``centre_gap_s`` take it, so it never puts a new object where another
        was seconds ago.
        """
        if not rows or not d_left:
            return []
        dl = sorted(d_left)
        closeness = -centre_distance(predicted[rows], boxes[dl])
        extra, _, _ = greedy_match(closeness, -self.max_centre_jump)
        pairs = [(rows[r], dl[c]) for r, c in extra]
        t_left -= {r for r, _ in pairs}
        d_left -= {c for _, c in pairs}
        return pairs

    def _hit(
        self, state: _State, box: FloatArray, score: float, label: str, t: float, *, vote: bool
    ) -> None:
        state.seen.append((t, to_cxcywh(box)))
        while len(state.seen) > 2 and t - state.seen[0][0] > self.velocity_window_s:
            state.seen.popleft()
        state.velocity = slope(state.seen)
        state.box = box
        state.score = score
        state.last_ts = t
        if vote:
            state.hits += 1
            state.votes[label] += 1

    def _expire(self, t: float) -> None:
        def alive(s: _State) -> bool:
            limit = self.max_lost_s if s.confirmed else self.tentative_lost_s
            return t - s.last_ts <= limit

        self._tracks = [s for s in self._tracks if alive(s)]
