"""Where a camera may look and what it counts: privacy masks, object filters and zones.

:class:`CameraScene` holds one camera's rules and gives the pipeline three small hooks:

- :meth:`CameraScene.prepare` blacks out the privacy masks on a frame before anything else
  sees it (detection, snapshots, anything that leaves the box);
- :meth:`CameraScene.filter` drops detections a per-label filter rejects (area, aspect ratio,
  object masks);
- :meth:`CameraScene.annotate` adds each track's zones and holds a track back from becoming an
  event until its median score passes ``min_median_score`` and, when the camera has
  ``required_zones``, until it has entered one of them.

Every part is pure and advanced by frame timestamps.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.config import CameraConfig, ObjectFilterConfig, ZoneConfig
from agent.domain import Detections, Frame, Track
from agent.vision.geometry import Polygon, anchor, contains, fill_mask


def as_polygon(points: Sequence[Sequence[float]]) -> Polygon:
    return tuple((float(p[0]), float(p[1])) for p in points)


class PrivacyMask:
    """Blacks out polygons on frames (the pixel mask is computed once per frame size)."""

    def __init__(self, polygons: Sequence[Polygon]) -> None:
        self.polygons = tuple(polygons)
        self._cache: dict[tuple[int, int], npt.NDArray[np.bool_]] = {}

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def mask(self, width: int, height: int) -> npt.NDArray[np.bool_]:
        key = (width, height)
        if key not in self._cache:
            self._cache[key] = fill_mask(self.polygons, width, height) > 0
        return self._cache[key]

    def apply(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """A copy of ``image`` with the masked pixels black (the caller's array is untouched)."""
        if not self.polygons:
            return image
        out: npt.NDArray[np.uint8] = image.copy()
        out[self.mask(image.shape[1], image.shape[0])] = 0
        return out


def keep_detections(
    dets: Detections, filters: Mapping[str, ObjectFilterConfig], width: int, height: int
) -> npt.NDArray[np.bool_]:
    """Which detections pass their label's filter (labels without a filter all pass)."""
    keep = np.ones(len(dets), dtype=bool)
    frame_area = float(max(width * height, 1))
    for i in range(len(dets)):
        f = filters.get(dets.label(i))
        if f is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in dets.xyxy[i])
        w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
        area = w * h / frame_area
        ratio = w / h if h > 0 else float("inf")
        x, y = anchor((x1, y1, x2, y2), width, height)
        keep[i] = (
            f.min_area <= area <= f.max_area
            and f.min_ratio <= ratio <= f.max_ratio
            and not any(contains(as_polygon(m), x, y) for m in f.masks)
        )
    return keep


@dataclass
class _ZoneState:
    since: dict[str, float] = field(default_factory=dict)  # zone -> inside since
    entered: list[str] = field(default_factory=list)  # in order of entry
    scores: list[float] = field(default_factory=list)
    passed: bool = False  # median score and required zones passed: may be an event


class Zones:
    """Zone membership per track: in a zone after ``inertia_s`` inside it, loitering after
    ``loitering_s``; leaving resets the time inside."""

    def __init__(self, zones: Sequence[ZoneConfig]) -> None:
        self.zones = [(z, as_polygon(z.polygon)) for z in zones]

    def update(
        self, state: _ZoneState, track: Track, t: float, width: int, height: int
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The zones ``track`` is in now and those it loiters in; records entries in state."""
        x, y = anchor(track.box, width, height)
        now, loiter = [], []
        for zone, poly in self.zones:
            if zone.labels and track.label not in zone.labels:
                continue
            if not contains(poly, x, y):
                state.since.pop(zone.name, None)
                continue
            since = state.since.setdefault(zone.name, t)
            if t - since < zone.inertia_s:
                continue
            now.append(zone.name)
            if zone.name not in state.entered:
                state.entered.append(zone.name)
            if zone.loitering_s is not None and t - since >= zone.loitering_s:
                loiter.append(zone.name)
        return tuple(now), tuple(loiter)


class CameraScene:
    """One camera's privacy masks, object filters and zones (see the module docstring)."""

    def __init__(self, cfg: CameraConfig) -> None:
        self.privacy = PrivacyMask([as_polygon(p) for p in cfg.privacy_masks])
        self.filters = dict(cfg.filters)
        self.zones = Zones(cfg.zones)
        self.required = set(cfg.required_zones)
        self._state: dict[int, _ZoneState] = {}

    @property
    def active(self) -> bool:
        return bool(self.privacy or self.filters or self.zones.zones)

    def prepare(self, frame: Frame) -> Frame:
        """The frame with its privacy masks blacked out."""
        if not self.privacy:
            return frame
        return dataclasses.replace(frame, image=self.privacy.apply(frame.image))

    def filter(self, dets: Detections, width: int, height: int) -> Detections:
        if not self.filters or not len(dets):
            return dets
        keep = keep_detections(dets, self.filters, width, height)
        return dets if keep.all() else dets.select(keep)

    def annotate(self, tracks: list[Track], t: float, width: int, height: int) -> list[Track]:
        """Tracks with their zones; held tentative until they pass the score and zone gates."""
        live = {tr.track_id for tr in tracks}
        self._state = {k: v for k, v in self._state.items() if k in live}
        return [self._annotate(tr, t, width, height) for tr in tracks]

    def _annotate(self, track: Track, t: float, width: int, height: int) -> Track:
        state = self._state.setdefault(track.track_id, _ZoneState())
        if track.seen_now:
            state.scores.append(track.score)
        now, loiter = self.zones.update(state, track, t, width, height)
        if not state.passed and track.confirmed:
            f = self.filters.get(track.label)
            score_ok = f is None or statistics.median(state.scores or [0.0]) >= f.min_median_score
            zone_ok = not self.required or bool(self.required & set(state.entered))
            state.passed = score_ok and zone_ok
        return dataclasses.replace(
            track, confirmed=track.confirmed and state.passed, zones=now,
            entered_zones=tuple(state.entered), loitering=loiter,
        )  # fmt: skip
