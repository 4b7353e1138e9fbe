"""Counting quality: run the agent's real pipeline on a labelled clip and score its events.

A labels file (CSV, ``#`` comments allowed) has one row per visit seen by eye::

    label,first,last,visibility,note
    person,61,199,clear,stationary: stands by the table

``first``/``last`` are frame numbers (0-based, inclusive), ``visibility`` is ``clear`` (the
agent must report it) or ``marginal`` (it may). Events are matched to visits of the same label
group (car, bus and truck are one) by frame overlap:

- each visit first gets the event overlapping it best (temporal IoU), one event per visit;
- a further event overlapping a visit makes that visit *split* (one visit, several events);
- a visit left without an event whose frames are mostly covered by an event already matched to
  a visit it did not overlap is *merged* (one event for two visits one after the other);
- otherwise it is *found* or *missed*; an event overlapping no visit of its label has *no visit*.

The target: per label, ``clear visits <= events <= all visits``, no stationary visit split and
no events of labels absent from the clip.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.capture.sources import FrameSource, make_source
from agent.config import CameraConfig, DetectorConfig, Settings, load_settings
from agent.domain import Frame
from agent.errors import ConfigError, SourceFinished
from agent.vision.assembly import detector_config, make_pipeline
from agent.vision.detector import Detector, load_detector
from agent.vision.events import Emission
from agent.vision.metrics import PipelineCounters

DEFAULT_GROUPS = {"bus": "car", "truck": "car"}


@dataclass(frozen=True, slots=True)
class Visit:
    """One visit of one object, labelled by eye."""

    label: str
    first: int
    last: int
    clear: bool
    note: str = ""

    @property
    def stationary(self) -> bool:
        return self.note.startswith("stationary")


@dataclass(frozen=True, slots=True)
class EventSpan:
    """The frames one agent event (``event_id``) covered, from its ``new`` to its ``end``."""

    event_id: str
    label: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    visits_clear: int
    visits_all: int
    events: int
    found: int
    missed: int
    missed_marginal: int
    split: int
    split_stationary: int
    merged: int
    no_visit: int

    @property
    def ok(self) -> bool:
        """Within the target: events between clear and all visits, no stationary split."""
        return self.visits_clear <= self.events <= self.visits_all and self.split_stationary == 0


@dataclass(frozen=True, slots=True)
class Score:
    clip: str
    detect_fps: float
    labels: tuple[LabelScore, ...]
    frames: int = 0
    detect_ms: float = 0.0
    per_visit: tuple[tuple[Visit, tuple[str, ...]], ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.labels)

    def label(self, name: str) -> LabelScore:
        return next(s for s in self.labels if s.label == name)


def read_labels(path: Path) -> list[Visit]:
    """The visits in a labels file; :class:`ConfigError` naming the row if one is malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read labels: {exc.strerror}")]) from exc
    rows = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    visits = []
    for n, row in enumerate(csv.DictReader(rows), start=1):
        where = f"{path.name} row {n}"
        try:
            first, last = int(row["first"]), int(row["last"])
            vis = row["visibility"].strip()
            label = row["label"].strip()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError([(where, f"need label,first,last,visibility: {exc}")]) from exc
        if vis not in {"clear", "marginal"}:
            raise ConfigError([(where, f"visibility must be clear or marginal, got {vis!r}")])
        if not 0 <= first <= last or not label:
            raise ConfigError([(where, "need a label and 0 <= first <= last")])
        visits.append(Visit(label, first, last, vis == "clear", (row.get("note") or "").strip()))
    return visits


def _overlap(a: EventSpan, v: Visit) -> int:
    return max(0, min(a.last, v.last) - max(a.first, v.first) + 1)


def _iou(a: EventSpan, v: Visit) -> float:
    inter = _overlap(a, v)
    union = max(a.last, v.last) - min(a.first, v.first) + 1
    return inter / union if union > 0 else 0.0


def _visits_overlap(a: Visit, b: Visit) -> int:
    return max(0, min(a.last, b.last) - max(a.first, b.first) + 1)


def match(
    visits: Sequence[Visit],
    events: Sequence[EventSpan],
    *,
    merge_cover: float = 0.5,
    marginal_weight: float = 0.8,
) -> tuple[dict[int, list[int]], set[int], list[int]]:
    """Events per visit index, the visits merged into another one's event, events with no visit.

    All visits and events must be of one label group.
    """
    per_visit: dict[int, list[int]] = {i: [] for i in range(len(visits))}
    pairs = sorted(  # a clear visit wins a near tie with a marginal one
        (
            (_iou(e, v) * (1.0 if v.clear else marginal_weight), ei, vi)
            for ei, e in enumerate(events)
            for vi, v in enumerate(visits)
        ),
        reverse=True,
    )
    used: set[int] = set()
    for iou, ei, vi in pairs:  # pass 1: one event per visit, best overlap first
        if iou > 0 and ei not in used and not per_visit[vi]:
            per_visit[vi].append(ei)
            used.add(ei)
    no_visit = []
    for ei, e in enumerate(events):  # pass 2: further events split the visit they overlap best
        if ei in used:
            continue
        best = max(range(len(visits)), key=lambda vi: _iou(e, visits[vi]), default=None)
        if best is None or _overlap(e, visits[best]) == 0:
            no_visit.append(ei)
        else:
            per_visit[best].append(ei)
    merged: set[int] = set()
    for vi, v in enumerate(visits):
        if per_visit[vi]:
            continue
        length = v.last - v.first + 1
        for other, evs in per_visit.items():
            concurrent = _visits_overlap(v, visits[other]) > merge_cover * length
            if (
                evs
                and not concurrent
                and any(_overlap(events[ei], v) >= merge_cover * length for ei in evs)
            ):
                merged.add(vi)
                break
    return per_visit, merged, no_visit


def score(
    clip: str,
    visits: Sequence[Visit],
    events: Sequence[EventSpan],
    *,
    detect_fps: float,
    groups: dict[str, str] | None = None,
) -> Score:
    """Score the events of one clip against its labelled visits, per label group."""
    groups = DEFAULT_GROUPS if groups is None else groups

    def group(label: str) -> str:
        return groups.get(label, label)

    names = sorted({group(v.label) for v in visits} | {group(e.label) for e in events})
    out = []
    per_visit_out: list[tuple[Visit, tuple[str, ...]]] = []
    for name in names:
        vs = [v for v in visits if group(v.label) == name]
        es = [e for e in events if group(e.label) == name]
        per_visit, merged, no_visit = match(vs, es)
        for vi, v in enumerate(vs):
            ordered = sorted(per_visit[vi], key=lambda ei: es[ei].first)
            per_visit_out.append((v, tuple(es[ei].event_id for ei in ordered)))
        empty = [vi for vi, evs in per_visit.items() if not evs and vi not in merged]
        splits = [vi for vi, evs in per_visit.items() if len(evs) > 1]
        out.append(
            LabelScore(
                label=name,
                visits_clear=sum(v.clear for v in vs),
                visits_all=len(vs),
                events=len(es),
                found=sum(1 for evs in per_visit.values() if evs),
                missed=sum(1 for vi in empty if vs[vi].clear),
                missed_marginal=sum(1 for vi in empty if not vs[vi].clear),
                split=len(splits),
                split_stationary=sum(1 for vi in splits if vs[vi].stationary),
                merged=len(merged),
                no_visit=len(no_visit),
            )
        )
    return Score(clip, detect_fps, tuple(out), per_visit=tuple(per_visit_out))


class SpanCollector:
    """An :class:`~agent.vision.pipeline.EventSink` that keeps the frame span of every event.

    The evaluation feeds frames whose ``wall_ts`` is their media time, so event timestamps map
    back to frame numbers through :meth:`frame_at`.
    """

    def __init__(self) -> None:
        self.emissions: list[Emission] = []
        self.times: list[float] = []

    def saw(self, ts: float) -> None:
        self.times.append(ts)

    def emit(self, emission: Emission) -> None:
        self.emissions.append(emission)

    def frame_at(self, ts: float) -> int:
        i = bisect.bisect_left(self.times, ts - 1e-6)
        return min(i, max(len(self.times) - 1, 0))

    def spans(self) -> list[EventSpan]:
        first: dict[str, tuple[str, float]] = {}
        last: dict[str, float] = {}
        for em in self.emissions:
            ev = em.event
            first.setdefault(ev.event_id, (ev.label, ev.start_ts))
            label = ev.label
            first[ev.event_id] = (label, first[ev.event_id][1])
            last[ev.event_id] = ev.end_ts if ev.end_ts is not None else ev.ts
        return [
            EventSpan(eid, label, self.frame_at(start), self.frame_at(last[eid]))
            for eid, (label, start) in first.items()
        ]


def read_all(source: FrameSource) -> Iterator[Frame]:
    """Every frame of a file source, ``wall_ts`` set to its media time (event times become
    clip times)."""
    source.open()
    try:
        while True:
            try:
                frame = source.read()
            except SourceFinished:
                return
            yield dataclasses.replace(frame, wall_ts=frame.ts)
    finally:
        source.close()


def eval_settings(
    clip: Path, *, model: Path, detect_fps: float, base: Settings | None = None, camera: str = ""
) -> Settings:
    """Settings to evaluate ``clip`` with: ``base``'s detector and events sections and its
    camera ``camera`` (zones, masks, filters), the clip as a file source played at full speed."""
    if base is None:
        return Settings(
            node_id="eval", commune_id="eval",
            cameras=[CameraConfig(id="eval", source=str(clip), realtime=False,
                                  detect_fps=detect_fps)],
            detector=DetectorConfig(model=model),
        )  # fmt: skip
    cams = [c for c in base.cameras if c.id == camera] if camera else base.cameras[:1]
    if not cams:
        raise ConfigError([("--camera", f"no camera {camera!r} in the config")])
    cam = cams[0].model_copy(
        update={"source": str(clip), "realtime": False, "loop": False, "detect_fps": detect_fps}
    )
    return base.model_copy(update={"cameras": [cam]})


def run_clip(
    clip: Path,
    visits: Sequence[Visit],
    settings: Settings,
    *,
    detector: Detector | None = None,
) -> Score:
    """Play ``clip`` through the agent's real pipeline (settings' first camera) and score it."""

    cam = settings.cameras[0]
    own = detector is None
    det = load_detector(detector_config(settings)) if detector is None else detector
    sink = SpanCollector()
    counters = PipelineCounters()
    try:
        pipeline = make_pipeline(settings, cam, det, sink, counters)
        for frame in read_all(make_source(cam)):
            sink.saw(frame.ts)
            pipeline.step(frame)
        pipeline.finish()
    finally:
        if own:
            det.close()
    stats = counters.snapshot(now=time.monotonic())
    result = score(clip.name, visits, sink.spans(), detect_fps=cam.detect_fps)
    return dataclasses.replace(
        result, frames=len(sink.times), detect_ms=stats.inference_ms_p50 or 0.0
    )


def format_visits(s: Score) -> str:
    """One line per labelled visit: its frames and the events matched to it."""
    return "\n".join(
        f"  {v.label:<8}{v.first:>6}-{v.last:<6}{'clear' if v.clear else 'marginal':<9}"
        f"{len(ids)} event(s) {' '.join(i[:8] for i in ids):<27} {v.note}"
        for v, ids in s.per_visit
    )


def format_score(s: Score) -> str:
    """A plain table, one row per label."""
    head = (
        f"{s.clip} @ {s.detect_fps:g} detect fps ({s.frames} frames, "
        f"{s.detect_ms:.1f} ms/detection)\n"
        f"{'label':<10}{'clear':>6}{'all':>5}{'events':>7}{'found':>6}{'missed':>7}"
        f"{'miss(m)':>8}{'split':>6}{'split(st)':>10}{'merged':>7}{'no-visit':>9}  ok"
    )
    rows = [
        f"{x.label:<10}{x.visits_clear:>6}{x.visits_all:>5}{x.events:>7}{x.found:>6}"
        f"{x.missed:>7}{x.missed_marginal:>8}{x.split:>6}{x.split_stationary:>10}"
        f"{x.merged:>7}{x.no_visit:>9}  {'yes' if x.ok else 'NO'}"
        for x in s.labels
    ]
    return "\n".join([head, *rows])


def run_all(args: argparse.Namespace) -> int:
    """``edge-agent evaluate``: print the score at each ``--detect-fps``; 0 if all on target."""

    visits = read_labels(args.labels)
    if not args.clip.is_file():
        raise ConfigError([(str(args.clip), "clip not found")])
    base = load_settings(args.config) if args.config else None
    first = eval_settings(
        args.clip, model=args.model, detect_fps=args.detect_fps[0], base=base, camera=args.camera
    )
    detector = load_detector(detector_config(first))
    ok = True
    try:
        for fps in args.detect_fps:
            settings = eval_settings(
                args.clip, model=args.model, detect_fps=fps, base=base, camera=args.camera
            )
            result = run_clip(args.clip, visits, settings, detector=detector)
            ok = ok and result.ok
            if args.json:
                doc = {
                    "clip": result.clip, "detect_fps": fps, "frames": result.frames,
                    "detect_ms_p50": result.detect_ms, "ok": result.ok,
                    "labels": [dataclasses.asdict(x) for x in result.labels],
                }  # fmt: skip
                print(json.dumps(doc), flush=True)
            else:
                print(format_score(result), flush=True)
                if args.verbose:
                    print(format_visits(result), flush=True)
    finally:
        detector.close()
    return 0 if ok else 1
