"""A small IoU tracker advanced by frame timestamps (no wall clock, no threads).

Like norfair or SORT without a Kalman filter: greedy association on IoU, with a centre-distance
fallback for objects that moved far between two detections at a low ``detect_fps``. Tracks are
tentative until they have ``min_hits`` detections; a tentative track that misses for
``tentative_lost_s`` is dropped (a flicker never becomes an object), a confirmed one survives
``max_lost_s`` unseen (a missed detection or two never splits a visit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.domain import BoxPx, Detections, Track

FloatArray = npt.NDArray[np.float64]


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of every box in ``a`` [N,4] with every box in ``b`` [M,4] (xyxy)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


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


@dataclass
class _State:
    track_id: int
    box: FloatArray
    score: float
    first_ts: float
    last_ts: float
    hits: int = 1
    votes: Counter[str] = field(default_factory=Counter)

    @property
    def label(self) -> str:
        return self.votes.most_common(1)[0][0]

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
    ) -> None:
        self.iou_match = iou_match
        self.min_hits = min_hits
        self.max_lost_s = max_lost_s
        self.tentative_lost_s = min(tentative_lost_s, max_lost_s)
        self.max_centre_jump = max_centre_jump
        self.centre_gap_s = centre_gap_s
        self.groups = groups if groups is not None else {"bus": "car", "truck": "car"}
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
        return [s.snapshot(s.hits >= self.min_hits, s.track_id in seen) for s in self._tracks]

    def _group(self, label: str) -> str:
        return self.groups.get(label, label)

    def _update_group(self, dets: Detections, t: float, group: str) -> set[int]:
        d_idx = [i for i in range(len(dets)) if self._group(dets.label(i)) == group]
        tracks = [s for s in self._tracks if self._group(s.label) == group]
        if not d_idx:
            return set()
        boxes = dets.xyxy[d_idx].astype(np.float64)
        t_boxes = np.array([s.box for s in tracks]).reshape(-1, 4)
        pairs, t_left, d_left = greedy_match(iou_matrix(t_boxes, boxes), self.iou_match)
        # fallback: nearest centre among what IoU left unmatched, for tracks seen recently
        # (a jump between two detections, not someone new where another was seconds ago)
        t_left = {r for r in t_left if t - tracks[r].last_ts <= self.centre_gap_s}
        if t_left and d_left:
            tl, dl = sorted(t_left), sorted(d_left)
            closeness = -centre_distance(t_boxes[tl], boxes[dl])
            extra, _, _ = greedy_match(closeness, -self.max_centre_jump)
            pairs += [(tl[r], dl[c]) for r, c in extra]
            d_left -= {dl[c] for _, c in extra}
        seen = set()
        for r, c in pairs:
            i = d_idx[c]
            self._hit(tracks[r], boxes[c], float(dets.scores[i]), dets.label(i), t)
            seen.add(tracks[r].track_id)
        for c in sorted(d_left):
            i = d_idx[c]
            state = _State(self._next_id, boxes[c], float(dets.scores[i]), t, t)
            state.votes[dets.label(i)] += 1
            self._tracks.append(state)
            seen.add(state.track_id)
            self._next_id += 1
        return seen

    @staticmethod
    def _hit(state: _State, box: FloatArray, score: float, label: str, t: float) -> None:
        state.box = box
        state.score = score
        state.last_ts = t
        state.hits += 1
        state.votes[label] += 1

    def _expire(self, t: float) -> None:
        def alive(s: _State) -> bool:
            limit = self.max_lost_s if s.hits >= self.min_hits else self.tentative_lost_s
            return t - s.last_ts <= limit

        self._tracks = [s for s in self._tracks if alive(s)]
