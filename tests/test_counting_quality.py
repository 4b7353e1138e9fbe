"""Counting targets on the labelled shared clips, through the agent's real pipeline (slow).

Per label: events between the clearly visible visits and all visits, no stationary object
split, no events of labels absent from the clip, at detect_fps 2.5, 5 and 10; and the same
number of events at the three rates.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from agent.tools.evaluate import Score, eval_settings, read_labels, run_clip
from tests.conftest import MEDIA, MODELS

LABELS = Path(__file__).parent / "data" / "labels"
CLIPS = ["one-by-one-person-detection", "ozlu_pedestrian_survaillance", "ozlu_vehicle_survaillance"]
RATES = [2.5, 5.0, 10.0]


@functools.cache
def score(clip: str, detect_fps: float) -> Score:
    path = MEDIA / f"{clip}.mp4"
    settings = eval_settings(path, model=MODELS / "yolox_nano_416.onnx", detect_fps=detect_fps)
    return run_clip(path, read_labels(LABELS / f"{clip}.csv"), settings)


@pytest.mark.slow
@pytest.mark.parametrize("detect_fps", RATES)
@pytest.mark.parametrize("clip", CLIPS)
def test_counts_on_target(clip, detect_fps):
    result = score(clip, detect_fps)
    labelled = {v.label for v in read_labels(LABELS / f"{clip}.csv")}
    for s in result.labels:
        assert s.label in labelled, f"events of {s.label}, absent from the clip"
        assert s.visits_clear <= s.events <= s.visits_all, s
        assert s.split_stationary == 0, s


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
def test_counts_do_not_depend_on_detect_fps(clip):
    counts = {fps: {s.label: s.events for s in score(clip, fps).labels} for fps in RATES}
    assert len({tuple(sorted(c.items())) for c in counts.values()}) == 1, counts
