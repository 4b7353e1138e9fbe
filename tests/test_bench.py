"""Smoke test of the benchmark: ``python -m bench --quick`` runs and writes a sane JSON.

No timing thresholds: the machine is shared, so only the shape and signs are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = ("yolox_nano_416", "picodet_s_320", "nanodet_m_320")
RATIOS = (
    "pipeline_every_frame.ratio_to_limit",
    "pipeline_every_frame.ratio_to_limit_inference_mean",
    "pipeline_default.cpu_per_media_s",
    "snapshot_render_vs_detect.p50",
    *(f"{m}.detect_overhead_share" for m in MODELS),
)


@pytest.fixture(scope="module")
def result(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--shared", str(shared_dir)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio_to_limit" in proc.stdout
    path = out / "bench.json"
    assert path.is_file()
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_bench_quick_writes_sane_json(result):
    assert result["quick"] is True
    machine = result["machine"]
    for key in ("cpu_model", "cores_logical", "cores_usable", "python", "onnxruntime", "opencv"):
        assert machine[key], key

    for clip in ("main", "other"):
        assert result["decode"][clip]["frames"] > 0
        assert result["decode"][clip]["fps"] > 0

    assert set(result["inference"]) == set(MODELS)
    for stats in result["inference"].values():
        assert 0 < stats["inference_ms"]["p50"] <= stats["inference_ms"]["p95"]
        assert stats["detect_ms"]["p50"] > 0
        assert 0 <= stats["overhead_share"] < 1

    every = result["pipeline_every_frame"]
    assert every["fps"] > 0
    assert every["limit_fps"] > 0
    assert every["ratio_to_limit"] > 0
    assert every["all_frames_detected"] is True

    default = result["pipeline_default"]
    assert default["detect_fps"] == 5
    assert 0 < default["frames_detected"] < default["frames"]
    assert default["events"]["new"] >= 1
    assert default["events"]["end"] == default["events"]["new"]  # finish() ends every visit
    assert default["cpu_s"] > 0
    assert default["wall_s"] > 0

    assert result["snapshot"]["render_ms"]["p50"] > 0
    assert result["snapshot"]["jpeg_bytes"] > 0

    outbox = result["outbox"]
    assert outbox["status"] in {"measured", "skipped"}
    if outbox["status"] == "measured":
        assert len(outbox["runs"]) == 4
        assert all(run["events_per_s"] > 0 for run in outbox["runs"].values())

    rss = result["rss"]
    assert rss["peak_rss_mb"] >= rss["rss_after_model_load_mb"] > 0

    for key in RATIOS:
        assert isinstance(result["ratios"][key], float), key


@pytest.mark.slow
def test_bench_measures_wear_and_the_link_under_faults(result):
    wear = result["wear"]["runs"]
    assert set(wear) == {"full_event", "full_snapshot", "normal_event", "normal_snapshot"}
    for run in wear.values():
        assert run["kib_written_per_event"] > 0
    if result["wear"]["fsync_counter"]:
        # FULL syncs the WAL on every commit; NORMAL only at checkpoints
        assert wear["full_event"]["fsyncs"] > wear["normal_event"]["fsyncs"]
    link = result["link"]
    assert link["flap"]["lost"] == 0  # a flapping link loses nothing
    assert link["flap"]["duplicate_factor"] >= 1.0
    assert link["backlog"]["delivered_all"] is True
    for lane in ("latency_events_only", "latency_with_snapshot_backlog"):
        assert link[lane]["delivered"] == link[lane]["events"]
