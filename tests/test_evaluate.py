"""The counting scorer: labels files, matching events to visits by frame overlap, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import ConfigError
from agent.tools.evaluate import EventSpan, Visit, format_visits, read_labels, score
from tests.conftest import MEDIA, MODELS

LABELS = Path(__file__).parent / "data" / "labels"


def v(first, last, clear=True, label="person", note=""):
    return Visit(label, first, last, clear, note)


def e(first, last, label="person", eid=None):
    return EventSpan(eid or f"{label}-{first}-{last}", label, first, last)


@pytest.mark.parametrize(
    ("visits", "events", "expect"),
    [
        # one visit, one event: found
        ([v(0, 100)], [e(5, 95)], {"found": 1, "missed": 0, "split": 0, "events": 1}),
        # one visit, two events one after the other: split
        ([v(0, 100)], [e(0, 40), e(50, 100)], {"found": 1, "split": 1, "events": 2}),
        # a stationary visit split is counted apart
        ([v(0, 100, note="stationary")], [e(0, 40), e(50, 100)], {"split_stationary": 1}),
        # two visits one after the other, one event over both: merged, not missed
        ([v(0, 50), v(60, 110)], [e(0, 110)], {"found": 1, "merged": 1, "missed": 0}),
        # a clear visit without an event: missed; a marginal one: missed_marginal
        ([v(0, 50), v(60, 110, clear=False)], [], {"missed": 1, "missed_marginal": 1}),
        # an event overlapping no visit
        ([v(0, 50)], [e(0, 50), e(80, 90)], {"found": 1, "no_visit": 1}),
        # two people at once, two events: both found (no merge across concurrent visits)
        ([v(0, 100), v(10, 110)], [e(0, 100), e(12, 108)], {"found": 2, "merged": 0}),
        # a clear visit wins a near tie with a marginal one
        ([v(221, 241), v(232, 241, clear=False)], [e(228, 240)], {"missed": 0}),
    ],
)
def test_matching_table(visits, events, expect):
    s = score("clip", visits, events, detect_fps=5).label("person")
    for key, want in expect.items():
        assert getattr(s, key) == want, key


def test_labels_are_grouped_and_absent_labels_reported():
    s = score(
        "clip",
        [v(0, 50, label="car")],
        [e(0, 50, label="truck"), e(0, 10, label="dog")],
        detect_fps=5,
    )
    assert s.label("car").found == 1
    assert s.label("dog").no_visit == 1
    assert not s.label("dog").ok
    assert not s.ok


@pytest.mark.parametrize(
    ("events", "ok"),
    [
        ([e(0, 50)], True),  # one clear visit found, the marginal one not reported
        ([e(0, 50), e(60, 100)], True),  # both reported
        ([], False),  # fewer events than clear visits
        ([e(0, 20), e(25, 50), e(60, 100)], False),  # more events than visits
    ],
)
def test_target_is_events_between_clear_and_all_visits(events, ok):
    visits = [v(0, 50), v(60, 100, clear=False)]
    assert score("clip", visits, events, detect_fps=5).ok is ok


def test_labels_file_format(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("# comment\nlabel,first,last,visibility,note\nperson,1,9,clear,stationary: x\n")
    assert read_labels(f) == [Visit("person", 1, 9, True, "stationary: x")]
    assert read_labels(f)[0].stationary


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("person,9,1,clear,", "first <= last"),
        ("person,1,9,maybe,", "clear or marginal"),
        ("person,x,9,clear,", "need label,first,last,visibility"),
    ],
)
def test_bad_labels_row_is_named(tmp_path, row, reason):
    f = tmp_path / "l.csv"
    f.write_text(f"label,first,last,visibility,note\n{row}\n")
    with pytest.raises(ConfigError) as err:
        read_labels(f)
    where, why = err.value.problems[0]
    assert where == "l.csv row 1"
    assert reason in why


def test_shared_clip_labels_parse():
    for f in LABELS.glob("*.csv"):
        visits = read_labels(f)
        assert visits, f
        assert (MEDIA / f"{f.stem}.mp4").is_file()


@pytest.mark.slow
def test_evaluate_cli_scores_the_one_by_one_clip(capsys):
    clip = MEDIA / "one-by-one-person-detection.mp4"
    labels = LABELS / "one-by-one-person-detection.csv"
    rc = main(["evaluate", str(clip), str(labels), "--model", str(MODELS / "yolox_nano_416.onnx"),
               "--detect-fps", "2.5", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert '"visits_clear": 6' in out
    assert rc == 0


def test_verbose_lists_each_visit_with_its_events():
    s = score("clip", [v(0, 100, note="stationary: by the door"), v(200, 300)],
              [e(0, 40, eid="aaaaaaaa1"), e(50, 100, eid="bbbbbbbb2")], detect_fps=5)  # fmt: skip
    lines = format_visits(s).splitlines()
    assert "2 event(s) aaaaaaaa bbbbbbbb" in lines[0]
    assert "stationary: by the door" in lines[0]
    assert "0 event(s)" in lines[1]
