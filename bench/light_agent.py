"""One run of the real agent (``App``) in a fresh process, for the light benchmark.

``python -m bench.light_agent --clip C --model M --cameras N --port P --data DIR
[--max-fps F] [--seconds S] [--no-gate]`` plays the clip on N cameras (``realtime: true``)
through the shared detector, publishing to the broker on 127.0.0.1:P, for at most S seconds,
then prints one JSON line: per camera counters, the detector service, CPU seconds, peak RSS and
the most detector runs started in any one second.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from agent.config import load_settings
from agent.node.app import App


def max_runs_per_s(starts: list[float]) -> int:
    """The most runs started in any window ``[t, t + 1 s)``."""
    best, j = 0, 0
    for i, t in enumerate(starts):
        while j < len(starts) and starts[j] < t + 1.0 - 1e-9:
            j += 1
        best = max(best, j - i)
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    cameras = [
        {"id": f"cam{i}", "source": str(args.clip), "realtime": True,
         "motion": {"enabled": not args.no_gate}}
        for i in range(args.cameras)
    ]  # fmt: skip
    settings = load_settings(
        None,
        node_id="bench", commune_id="bench",
        mqtt={"host": "127.0.0.1", "port": args.port},
        cameras=cameras,
        detector={"model": str(args.model), "max_fps": args.max_fps or None},
        outbox={"path": str(args.data / "outbox.db")},
        heartbeat={"interval_s": 3600},
        shutdown={"drain_timeout_s": 5},
    )  # fmt: skip
    proc = psutil.Process()
    app = App(settings)
    cpu0, wall0 = proc.cpu_times(), time.perf_counter()
    app.start()
    peak_sampled = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and not app.all_finished():
        time.sleep(0.5)
        peak_sampled = max(peak_sampled, proc.memory_info().rss)
    wall = time.perf_counter() - wall0
    now = time.monotonic()
    cams = []
    for cam in app.cameras:
        pipe = cam.counters.snapshot(now)
        det = cam.detector.stats()
        src = cam.capture.status()
        cams.append({
            "id": cam.cfg.id, "frames_in": src.frames_in, "frames_dropped": src.frames_dropped,
            "frames_skipped": pipe.frames_skipped, "skipped_no_motion": pipe.skipped_no_motion,
            "submitted": det.submitted, "detected": det.detected, "dropped_busy": det.dropped_busy,
            "fps_detected_mean": round(det.detected / wall, 2),
            "inference_ms_p50": det.inference_ms_p50, "inference_ms_p95": det.inference_ms_p95,
            "events_emitted": pipe.events, "errors": pipe.errors + det.errors,
        })  # fmt: skip
    svc = app.detector_service
    starts = list(svc.run_starts)
    app.stop_event.set()
    app.shutdown()
    cpu1 = proc.cpu_times()
    return {
        "cameras": args.cameras,
        "max_fps": args.max_fps or None,
        "gate": not args.no_gate,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 1),
        "detector_runs": len(starts),
        "detector_fps_mean": round(len(starts) / wall, 2),
        "detector_max_runs_in_1s": max_runs_per_s(starts),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_sampled_mb": round(peak_sampled / 2**20, 1),
        "per_camera": cams,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.light_agent")
    p.add_argument("--clip", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--max-fps", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--no-gate", action="store_true")
    args = p.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
