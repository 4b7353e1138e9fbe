"""The event builder: one event per visit, advanced by frame timestamps.

Rules (every threshold an argument):
- ``new`` once a track is confirmed, with the best snapshot seen so far (tentative frames too);
- ``update`` at most once per ``update_interval_s`` and only when the object changed
  meaningfully: it moved more than ``min_move`` of the frame diagonal since the last message,
  its label changed, or a snapshot better by ``snapshot_gain`` exists; and at once when its
  zones changed (entered, left, started loitering);
- ``end`` when the tracker has dropped the track (unseen for the end timeout), with the best
  snapshot if it is better than the last one sent.
A person standing still for minutes is one event: nothing changes, so nothing is sent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from agent.domain import BoxPx, Event, EventType, Frame, SnapshotRequest, Track


def snapshot_quality(box: BoxPx, score: float, width: int, height: int) -> float:
    """How good a frame is as a snapshot: confident, large, and not cut by the frame edge."""
    x1, y1, x2, y2 = box
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0) / max(width * height, 1)
    margin = 2.0
    cut = x1 <= margin or y1 <= margin or x2 >= width - margin or y2 >= height - margin
    return score * math.sqrt(area) * (0.5 if cut else 1.0)


def normalise(box: BoxPx, width: int, height: int) -> BoxPx:
    x1, y1, x2, y2 = box

    def clip(v: float) -> float:
        return min(max(v, 0.0), 1.0)

    return (clip(x1 / width), clip(y1 / height), clip(x2 / width), clip(y2 / height))


def moved(a: BoxPx, b: BoxPx) -> float:
    """Distance between the centres of two normalised boxes, in frame diagonals."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    return math.hypot(ca[0] - cb[0], ca[1] - cb[1]) / math.sqrt(2)


def _zones(track: Track) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return (track.zones, track.entered_zones, track.loitering)


@dataclass(frozen=True, slots=True)
class Emission:
    """An event message and, when it carries one, the snapshot to render for it."""

    event: Event
    snapshot: SnapshotRequest | None


@dataclass
class _Best:
    frame: Frame
    box: BoxPx
    score: float
    quality: float


@dataclass
class _Open:
    event_id: str
    label: str
    start_ts: float
    rev: int
    last_box: BoxPx
    last_emit_t: float
    sent_quality: float
    best_score: float
    last_wall: float
    zones: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())


class EventBuilder:
    """Turns tracker output into :class:`Emission` values for one camera."""

    def __init__(
        self,
        camera: str,
        *,
        update_interval_s: float,
        min_move: float,
        snapshot_gain: float,
        snapshots: bool = True,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.camera = camera
        self.update_interval_s = update_interval_s
        self.min_move = min_move
        self.snapshot_gain = snapshot_gain
        self.snapshots = snapshots
        self._new_id = new_id
        self._best: dict[int, _Best] = {}
        self._open: dict[int, _Open] = {}
        self._size = (1, 1)

    def update(self, tracks: list[Track], frame: Frame) -> list[Emission]:
        """Advance with the tracker's output for ``frame``; the messages to send now."""
        self._size = (frame.width, frame.height)
        out: list[Emission] = []
        live = {t.track_id for t in tracks}
        for track_id in [k for k in self._open if k not in live]:
            out.append(self._end(track_id))
        self._best = {k: v for k, v in self._best.items() if k in live}
        for track in tracks:
            if track.seen_now:
                self._remember(track, frame)
            if not track.confirmed:
                continue
            if track.track_id not in self._open:
                out.append(self._new(track, frame))
            elif track.seen_now:
                out.extend(self._maybe_update(track, frame))
        return out

    def close(self) -> list[Emission]:
        """End every open event (the source finished or the agent is stopping)."""
        out = [self._end(k) for k in list(self._open)]
        self._best.clear()
        return out

    def _remember(self, track: Track, frame: Frame) -> None:
        q = snapshot_quality(track.box, track.score, frame.width, frame.height)
        best = self._best.get(track.track_id)
        if best is None or q > best.quality:
            self._best[track.track_id] = _Best(frame, track.box, track.score, q)

    def _wall(self, frame: Frame, ts: float) -> float:
        return frame.wall_ts - (frame.ts - ts)

    def _new(self, track: Track, frame: Frame) -> Emission:
        best = self._best.get(track.track_id)
        start = self._wall(frame, track.first_ts)
        op = _Open(
            self._new_id(), track.label, start, 0, normalise(track.box, *self._size),
            frame.ts, 0.0, track.score, frame.wall_ts,
        )  # fmt: skip
        self._open[track.track_id] = op
        op.best_score = max(op.best_score, best.score if best else 0.0)
        return self._emit(op, EventType.NEW, track, frame.wall_ts, best)

    def _maybe_update(self, track: Track, frame: Frame) -> list[Emission]:
        op = self._open[track.track_id]
        op.last_wall = frame.wall_ts
        op.best_score = max(op.best_score, track.score)
        zoned = _zones(track) != op.zones  # entering, leaving or loitering: sent at once
        if frame.ts - op.last_emit_t < self.update_interval_s and not zoned:
            return []
        box = normalise(track.box, *self._size)
        best = self._best.get(track.track_id)
        better = best is not None and best.quality > op.sent_quality * (1 + self.snapshot_gain)
        changed = moved(box, op.last_box) >= self.min_move or track.label != op.label or better
        if not (changed or zoned):
            return []
        op.rev += 1
        op.last_box, op.last_emit_t, op.label = box, frame.ts, track.label
        return [self._emit(op, EventType.UPDATE, track, frame.wall_ts, best if better else None)]

    def _end(self, track_id: int) -> Emission:
        op = self._open.pop(track_id)
        best = self._best.pop(track_id, None)
        better = best is not None and best.quality > op.sent_quality * (1 + self.snapshot_gain)
        op.rev += 1
        end_ts = max(op.last_wall, op.start_ts)
        event = Event(
            id=f"{op.event_id}-{op.rev}", event_id=op.event_id, type=EventType.END,
            camera=self.camera, label=op.label, score=round(op.best_score, 4), box=op.last_box,
            start_ts=op.start_ts, end_ts=end_ts, ts=end_ts,
            has_snapshot=bool(self.snapshots and better), rev=op.rev,
            zones=op.zones[0], entered_zones=op.zones[1], loitering=op.zones[2],
        )  # fmt: skip
        snap = self._request(op, best) if event.has_snapshot and best else None
        return Emission(event, snap)

    def _emit(
        self, op: _Open, kind: EventType, track: Track, now: float, best: _Best | None
    ) -> Emission:
        op.last_wall = now
        op.zones = _zones(track)
        has_snap = bool(self.snapshots and best is not None)
        event = Event(
            id=f"{op.event_id}-{op.rev}", event_id=op.event_id, type=kind, camera=self.camera,
            label=op.label, score=round(op.best_score, 4),
            box=normalise(track.box, *self._size), start_ts=op.start_ts, end_ts=None, ts=now,
            has_snapshot=has_snap, rev=op.rev, zones=track.zones,
            entered_zones=track.entered_zones, loitering=track.loitering,
        )  # fmt: skip
        return Emission(event, self._request(op, best) if has_snap and best else None)

    def _request(self, op: _Open, best: _Best) -> SnapshotRequest:
        op.sent_quality = best.quality
        return SnapshotRequest(op.event_id, best.frame, best.box, op.label, best.score)
