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

Emissions are proposals: :meth:`EventBuilder.update` and :meth:`EventBuilder.close` do not
change the state of open visits; the caller commits each emission to its sink and then calls
:meth:`EventBuilder.commit`. An emission that was not committed (the sink failed: disk full,
I/O error) leaves the visit as it was, so the same change is proposed again on a later frame:
no ``update`` or ``end`` is ever sent for a visit whose ``new`` was not committed.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from agent.domain import (
    BoxPx,
    EndReason,
    Event,
    EventType,
    Frame,
    OpenVisit,
    SnapshotRequest,
    Track,
)
from agent.vision.snapshot import KeptView


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


ZoneState = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
"""A track's zones now, the zones it entered, the zones it loiters in."""


def _zones(track: Track) -> ZoneState:
    return (track.zones, track.entered_zones, track.loitering)


@dataclass(frozen=True, slots=True)
class Emission:
    """An event message, the snapshot to render for it, and the visit state it commits.

    ``visit`` is the open visit as it stands after this message (``new``/``update``), None on
    ``end`` (the sink then closes ``event.event_id``). ``track_id`` is the tracker's id, None
    for visits ended after a restart.
    """

    event: Event
    snapshot: SnapshotRequest | None
    visit: OpenVisit | None = None
    track_id: int | None = None


@dataclass
class _Best:
    view: KeptView | None  # None when snapshots are off
    box: BoxPx
    score: float
    quality: float


@dataclass(frozen=True, slots=True)
class _Open:
    """What the builder knows of a visit whose ``new`` was committed."""

    event_id: str
    label: str
    start_ts: float
    rev: int
    last_box: BoxPx
    last_emit_t: float
    sent_quality: float
    best_score: float
    last_wall: float
    zones: ZoneState = ((), (), ())


class EventBuilder:
    """Turns tracker output into :class:`Emission` proposals for one camera."""

    def __init__(
        self,
        camera: str,
        *,
        update_interval_s: float,
        min_move: float,
        snapshot_gain: float,
        snapshots: bool = True,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        view_width: int = 640,
        view_quality: int = 90,
    ) -> None:
        self.camera = camera
        self.update_interval_s = update_interval_s
        self.min_move = min_move
        self.snapshot_gain = snapshot_gain
        self.snapshots = snapshots
        self._new_id = new_id
        self.view_width = view_width  # best views are kept this wide (snapshots.max_width)
        self.view_quality = view_quality
        self._view: KeptView | None = None  # the latest frame's view, shared by its tracks
        self._best: dict[int, _Best] = {}
        self._open: dict[int, _Open] = {}
        self._seen: dict[int, tuple[float, float]] = {}  # track -> (best score, last wall time)
        self._pending: dict[str, tuple[int, _Open | None]] = {}  # message id -> state after it
        self._size = (1, 1)

    @property
    def open_visits(self) -> int:
        return len(self._open)

    def update(self, tracks: list[Track], frame: Frame) -> list[Emission]:
        """Advance with the tracker's output for ``frame``; the messages to commit now."""
        self._pending.clear()
        self._size = (frame.width, frame.height)
        out: list[Emission] = []
        live = {t.track_id for t in tracks}
        for track_id in [k for k in self._open if k not in live]:
            out.append(self._end(track_id, EndReason.TIMEOUT))
        keep = live | self._open.keys()
        self._best = {k: v for k, v in self._best.items() if k in keep}
        self._seen = {k: v for k, v in self._seen.items() if k in keep}
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

    def close(self, reason: EndReason = EndReason.SHUTDOWN) -> list[Emission]:
        """End every open visit (the source finished or the agent is stopping)."""
        self._pending.clear()
        return [self._end(k, reason) for k in list(self._open)]

    def commit(self, emission: Emission) -> None:
        """The sink stored ``emission``: the visit moves on (unknown emissions are ignored)."""
        pending = self._pending.pop(emission.event.id, None)
        if pending is None:
            return
        track_id, state = pending
        if state is None:
            self._open.pop(track_id, None)
            self._best.pop(track_id, None)
            self._seen.pop(track_id, None)
        else:
            self._open[track_id] = state

    def _remember(self, track: Track, frame: Frame) -> None:
        q = snapshot_quality(track.box, track.score, frame.width, frame.height)
        best = self._best.get(track.track_id)
        if best is None or q > best.quality:
            self._best[track.track_id] = _Best(self._keep(frame), track.box, track.score, q)
        score, _ = self._seen.get(track.track_id, (0.0, frame.wall_ts))
        self._seen[track.track_id] = (max(score, track.score), frame.wall_ts)

    def _keep(self, frame: Frame) -> KeptView | None:
        """``frame`` as a small JPEG view, encoded once however many tracks want it."""
        if not self.snapshots:
            return None
        view = self._view
        if view is None or (view.camera_id, view.index, view.ts) != (
            frame.camera_id, frame.index, frame.ts,
        ):  # fmt: skip
            view = self._view = KeptView.of(
                frame, max_width=self.view_width, quality=self.view_quality
            )
        return view

    def _wall(self, frame: Frame, ts: float) -> float:
        return frame.wall_ts - (frame.ts - ts)

    def _new(self, track: Track, frame: Frame) -> Emission:
        best = self._best.get(track.track_id)
        start = min(self._wall(frame, track.first_ts), frame.wall_ts)
        op = _Open(
            self._new_id(), track.label, start, 0, normalise(track.box, *self._size), frame.ts,
            0.0, max(track.score, best.score if best else 0.0), frame.wall_ts, _zones(track),
        )  # fmt: skip
        return self._emit(op, EventType.NEW, track.track_id, frame.wall_ts, best)

    def _maybe_update(self, track: Track, frame: Frame) -> list[Emission]:
        op = self._open[track.track_id]
        zoned = _zones(track) != op.zones  # entering, leaving or loitering: sent at once
        if frame.ts - op.last_emit_t < self.update_interval_s and not zoned:
            return []
        box = normalise(track.box, *self._size)
        best = self._best.get(track.track_id)
        better = best is not None and best.quality > op.sent_quality * (1 + self.snapshot_gain)
        changed = moved(box, op.last_box) >= self.min_move or track.label != op.label or better
        if not (changed or zoned):
            return []
        op = dataclasses.replace(
            op, rev=op.rev + 1, last_box=box, last_emit_t=frame.ts, label=track.label,
            zones=_zones(track),
        )  # fmt: skip
        snap = best if better else None
        return [self._emit(op, EventType.UPDATE, track.track_id, frame.wall_ts, snap)]

    def _end(self, track_id: int, reason: EndReason) -> Emission:
        op = self._observed(track_id, self._open[track_id])
        best = self._best.get(track_id)
        better = best is not None and best.quality > op.sent_quality * (1 + self.snapshot_gain)
        end_ts = max(op.last_wall, op.start_ts)
        event = Event(
            id=f"{op.event_id}-{op.rev + 1}", event_id=op.event_id, type=EventType.END,
            camera=self.camera, label=op.label, score=round(op.best_score, 4), box=op.last_box,
            start_ts=op.start_ts, end_ts=end_ts, ts=end_ts,
            has_snapshot=bool(self.snapshots and better), rev=op.rev + 1, end_reason=reason,
            zones=op.zones[0], entered_zones=op.zones[1], loitering=op.zones[2],
        )  # fmt: skip
        snap = self._request(op, best) if event.has_snapshot and best else None
        self._pending[event.id] = (track_id, None)
        return Emission(event, snap, None, track_id)

    def _observed(self, track_id: int, op: _Open) -> _Open:
        """``op`` with the best score and last sighting the tracker has seen since."""
        score, wall = self._seen.get(track_id, (op.best_score, op.last_wall))
        return dataclasses.replace(
            op, best_score=max(op.best_score, score), last_wall=max(op.last_wall, wall)
        )

    def _emit(
        self, op: _Open, kind: EventType, track_id: int, now: float, best: _Best | None
    ) -> Emission:
        op = dataclasses.replace(self._observed(track_id, op), last_wall=now)
        has_snap = bool(self.snapshots and best is not None)
        snap = None
        if has_snap and best is not None:
            snap = self._request(op, best)
            op = dataclasses.replace(op, sent_quality=best.quality)
        event = Event(
            id=f"{op.event_id}-{op.rev}", event_id=op.event_id, type=kind, camera=self.camera,
            label=op.label, score=round(op.best_score, 4), box=op.last_box,
            start_ts=op.start_ts, end_ts=None, ts=now, has_snapshot=has_snap, rev=op.rev,
            zones=op.zones[0], entered_zones=op.zones[1], loitering=op.zones[2],
        )  # fmt: skip
        visit = OpenVisit(
            op.event_id, self.camera, op.label, op.start_ts, max(now, op.start_ts), op.last_box,
            event.score, op.rev,
        )  # fmt: skip
        self._pending[event.id] = (track_id, op)
        return Emission(event, snap, visit, track_id)

    @staticmethod
    def _request(op: _Open, best: _Best) -> SnapshotRequest:
        view = best.view
        if view is None:
            raise ValueError("a snapshot was requested with snapshots off")
        return SnapshotRequest(op.event_id, view.frame(), view.box(best.box), op.label, best.score)


def restart_end(visit: OpenVisit) -> Emission:
    """The ``end`` of a visit a crash left open, from what was committed about it."""
    rev = visit.rev + 1
    event = Event(
        id=f"{visit.event_id}-{rev}", event_id=visit.event_id, type=EventType.END,
        camera=visit.camera, label=visit.label, score=visit.score, box=visit.box,
        start_ts=visit.start_ts, end_ts=visit.last_ts, ts=visit.last_ts, has_snapshot=False,
        rev=rev, end_reason=EndReason.RESTART,
    )  # fmt: skip
    return Emission(event, None, None, None)
