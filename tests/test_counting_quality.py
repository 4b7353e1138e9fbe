"""Counting targets on the labelled shared clips, through the agent's real pipeline (slow).

Per label: events between the clearly visible visits and all visits, no stationary object
split, no events of labels absent from the clip, at detect_fps 2.5, 5 and 10.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.tools.evaluate import eval_settings, read_labels, run_clip
from tests.conftest import MEDIA, MODELS

LABELS = Path(__file__).parent / "data" / "labels"
CLIPS = ["one-by-one-person-detection", "ozlu_pedestrian_survaillance", "ozlu_vehicle_survaillance"]


@pytest.mark.slow
@pytest.mark.parametrize("detect_fps", [2.5, 5.0, 10.0])
@pytest.mark.parametrize("clip", CLIPS)
def test_counts_on_target(clip, detect_fps):
    path = MEDIA / f"{clip}.mp4"
    visits = read_labels(LABELS / f"{clip}.csv")
    settings = eval_settings(path, model=MODELS / "yolox_nano_416.onnx", detect_fps=detect_fps)
    result = run_clip(path, visits, settings)
    labelled = {v.label for v in visits}
    for s in result.labels:
        assert s.label in labelled, f"events of {s.label}, absent from the clip"
        assert s.visits_clear <= s.events <= s.visits_all, s
        assert s.split_stationary == 0, s
