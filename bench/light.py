"""``python -m bench.light [--quick] [--out DIR] [--shared DIR]``: issue 11's benchmark.

Sections (ratios inside one run, so a loaded machine hurts both sides alike):

- ``gate``: the one-by-one clip played as fast as it goes (``realtime: false``) by a naive loop
  (decode every frame, detect every other frame), the agent's pipeline without and with the
  motion gate, all through the same model and threads: detector runs, CPU and wall seconds,
  events;
- ``onnxruntime``: inference ms for threads 1/2, spinning off/on, graph optimisation levels;
- ``regions``: people found in motion regions by the crop and by the whole frame;
- ``agent``: the real agent in a fresh process (``bench.light_agent``) on realtime cameras with
  a real Mosquitto: one camera and four for ``agent_seconds`` each, then the Pi budget (four
  cameras, ``detector.max_fps: 6``, the whole clip): detector rate, per camera detected,
  skipped and dropped frames, events, CPU, peak RSS, and the latency from an event's frame to
  its arrival at a subscriber.

Writes ``light.json`` and ``light.png`` (OpenCV drawing) into the output folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import DetectorConfig, load_settings
from agent.tools.localbroker import LocalBroker
from agent.vision.assembly import detector_config, make_pipeline
from agent.vision.detector import load_detector
from agent.vision.detector_service import DetectorService
from agent.vision.metrics import PipelineCounters
from bench.common import (
    DEFAULT_MODEL,
    DEFAULT_SHARED,
    MAIN_CLIP,
    REPO,
    SAMPLE_FRAME,
    Assets,
    read_frame,
)
from bench.machine import load_average, machine_info
from bench.pipeline import CountingSink, play
from bench.regions import compare_regions

PEDESTRIANS = "ozlu_pedestrian_survaillance.mp4"


def _log(msg: str) -> None:
    print(f"[bench.light] {msg}", file=sys.stderr, flush=True)


def naive_loop(model: Path, clip: Path, max_frames: int | None) -> dict[str, Any]:
    """Decode every frame, detect every other frame: the baseline the agent must beat."""
    detector = load_detector(DetectorConfig(model=model))
    cap = cv2.VideoCapture(str(clip))
    frames = runs = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while max_frames is None or frames < max_frames:
        ok, image = cap.read()
        if not ok:
            break
        if frames % 2 == 0:
            detector.detect(image)
            runs += 1
        frames += 1
    cap.release()
    wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "frames": frames, "detector_runs": runs,
        "wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2),
    }  # fmt: skip


def agent_pipeline(
    model: Path, clip: Path, *, gated: bool, max_frames: int | None
) -> dict[str, Any]:
    """The agent's pipeline, built as the agent builds it (``agent.vision.assembly``), through the
    shared detector service, ``realtime: false``."""
    settings = load_settings(
        None, node_id="bench", commune_id="bench",
        cameras=[{"id": "bench", "source": str(clip), "detect_fps": 5.0,
                  "motion": {"enabled": gated}}],
        detector={"model": str(model)},
    )  # fmt: skip
    detector = load_detector(detector_config(settings))
    service = DetectorService(detector)
    client = service.client("bench", 5.0)
    sink = CountingSink()
    pipeline = make_pipeline(settings, settings.cameras[0], client, sink, PipelineCounters())
    service.start()
    try:
        run = play(pipeline, clip, max_frames)
    finally:
        service.stop()
    stats = pipeline.counters.snapshot(time.monotonic())
    return {
        "gate": gated, "frames": run.frames, "detector_runs": stats.frames_detected,
        "skipped_no_motion": stats.skipped_no_motion, "events": sink.counts(),
        "wall_s": round(run.wall_s, 2), "cpu_s": round(run.cpu_s, 2),
    }  # fmt: skip


def gate_section(assets: Assets, max_frames: int | None) -> dict[str, Any]:
    model, clip = assets.model(DEFAULT_MODEL), assets.clip(MAIN_CLIP)
    naive = naive_loop(model, clip, max_frames)
    off = agent_pipeline(model, clip, gated=False, max_frames=max_frames)
    on = agent_pipeline(model, clip, gated=True, max_frames=max_frames)
    return {
        "naive": naive, "gate_off": off, "gate_on": on,
        "runs_cut": round(off["detector_runs"] / max(on["detector_runs"], 1), 2),
        "gated_wall_vs_naive": round(on["wall_s"] / naive["wall_s"], 3),
        "ungated_wall_vs_naive": round(off["wall_s"] / naive["wall_s"], 3),
        "gated_cpu_vs_ungated": round(on["cpu_s"] / off["cpu_s"], 3),
        # the same visits: as many new and end messages (updates depend on which frames ran)
        "same_visits": all(on["events"][k] == off["events"][k] for k in ("new", "end")),
    }  # fmt: skip


def ort_section(assets: Assets, runs: int) -> dict[str, Any]:
    """Inference ms (p50, mean) per threads / spin / graph optimisation setting."""
    image = read_frame(assets.clip(MAIN_CLIP), SAMPLE_FRAME)
    settings = [(1, False, "all"), (2, False, "all"), (1, True, "all"), (2, True, "all"),
                (2, False, "disable"), (2, False, "basic"), (2, False, "extended")]  # fmt: skip
    out = {}
    for threads, spin, graph in settings:
        cfg = DetectorConfig(
            model=assets.model(DEFAULT_MODEL), threads=threads, spin=spin,
            graph_optimization=graph,  # type: ignore[arg-type]
        )  # fmt: skip
        det = load_detector(cfg)
        for _ in range(3):
            det.detect(image)
        ms, cpu0 = [], time.process_time()
        for _ in range(runs):
            t = time.perf_counter()
            det.detect(image)
            ms.append((time.perf_counter() - t) * 1000)
        cpu_ms = (time.process_time() - cpu0) * 1000 / runs
        out[f"threads={threads},spin={int(spin)},graph={graph}"] = {
            "ms_p50": round(float(np.percentile(ms, 50)), 2),
            "ms_mean": round(float(np.mean(ms)), 2),
            "cpu_ms_per_run": round(cpu_ms, 2),
        }
    return out


class Subscriber:
    """Records each event message's arrival time at the broker's far side."""

    def __init__(self, port: int) -> None:
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("camnet/+/+/events", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.arrivals.append((time.time(), json.loads(msg.payload)))

    def take(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            out, self.arrivals = self.arrivals, []
        return out

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def latency(arrivals: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """ms from a ``new`` event's frame (its ``ts``) to its arrival at the subscriber."""
    ms = [(at - p["ts"]) * 1000 for at, p in arrivals if p.get("type") == "new"]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
    }  # fmt: skip


def visits(arrivals: list[tuple[float, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Per camera: how many new and end messages arrived (label person only)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"new": 0, "end": 0, "other_label": 0})
    for _, p in arrivals:
        cam = out[p["camera"]]
        if p["label"] != "person":
            cam["other_label"] += 1
        if p["type"] in ("new", "end"):
            cam[p["type"]] += 1
    return dict(out)


def agent_run(
    assets: Assets, port: int, sub: Subscriber, *, cameras: int, max_fps: float, seconds: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-light-") as data:
        cmd = [
            sys.executable, "-m", "bench.light_agent", "--clip", str(assets.clip(MAIN_CLIP)),
            "--model", str(assets.model(DEFAULT_MODEL)), "--cameras", str(cameras),
            "--port", str(port), "--data", data, "--max-fps", str(max_fps),
            "--seconds", str(seconds),
        ]  # fmt: skip
        proc = subprocess.run(  # noqa: S603 - our own module, our own arguments
            cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.light_agent failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    time.sleep(0.5)
    arrivals = sub.take()
    result["event_latency"] = latency(arrivals)
    result["visits_at_broker"] = visits(arrivals)
    return result


def agent_section(assets: Assets, seconds: float, pi_seconds: float) -> dict[str, Any]:
    broker = LocalBroker(conf_lines=("set_tcp_nodelay true",)).start()
    try:
        sub = Subscriber(broker.port)
        try:
            out = {}
            for name, cams, max_fps, secs in (
                ("one_camera", 1, 0.0, seconds),
                ("four_cameras", 4, 0.0, seconds),
                ("pi_budget_four_cameras_max_fps_6", 4, 6.0, pi_seconds),
            ):
                _log(f"agent: {name} ({secs:g} s)")
                out[name] = agent_run(
                    assets, broker.port, sub, cameras=cams, max_fps=max_fps, seconds=secs
                )
            return out
        finally:
            sub.stop()
    finally:
        broker.stop()


def bars(canvas: np.ndarray, top: int, title: str, items: list[tuple[str, float]]) -> int:
    """A titled horizontal bar chart drawn at ``top``; the y where the next one goes."""
    cv2.putText(canvas, title, (20, top + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    peak = max([v for _, v in items] + [1e-9])
    y = top + 35
    for label, value in items:
        cv2.putText(canvas, label, (20, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (40, 40, 40), 1)
        width = int(500 * value / peak)
        cv2.rectangle(canvas, (260, y), (260 + max(width, 1), y + 20), (180, 120, 40), -1)
        cv2.putText(canvas, f"{value:g}", (265 + width, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1)  # fmt: skip
        y += 26
    return y + 10


def chart(r: dict[str, Any], path: Path) -> None:
    canvas = np.full((900, 900, 3), 255, np.uint8)
    g = r["gate"]
    y = bars(canvas, 0, "Detector runs, one-by-one clip", [
        ("gate off", g["gate_off"]["detector_runs"]), ("gate on", g["gate_on"]["detector_runs"]),
        ("naive (every other frame)", g["naive"]["detector_runs"])])  # fmt: skip
    y = bars(canvas, y, "Wall seconds, realtime false", [
        ("naive loop", g["naive"]["wall_s"]), ("agent, gate off", g["gate_off"]["wall_s"]),
        ("agent, gate on", g["gate_on"]["wall_s"])])  # fmt: skip
    if "agent" in r:
        a = r["agent"]
        names = [("1 cam", "one_camera"), ("4 cams", "four_cameras"),
                 ("4 cams, max_fps 6", "pi_budget_four_cameras_max_fps_6")]  # fmt: skip
        y = bars(canvas, y, "Detected fps per camera (mean), realtime", [
            (label, a[k]["per_camera"][0]["fps_detected_mean"]) for label, k in names])  # fmt: skip
        y = bars(canvas, y, "CPU seconds per wall second", [
            (label, round(a[k]["cpu_s"] / a[k]["wall_s"], 2)) for label, k in names])  # fmt: skip
        y = bars(canvas, y, "Peak RSS MB", [(label, a[k]["peak_rss_mb"]) for label, k in names])
    ort = r["onnxruntime"]
    bars(
        canvas,
        y,
        "CPU ms per inference (YOLOX-Nano)",
        [(k, v["cpu_ms_per_run"]) for k, v in ort.items()],
    )
    cv2.imwrite(str(path), canvas)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.light", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a smoke test: short runs")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    p.add_argument("--no-agent", action="store_true", help="skip the realtime agent runs")
    args = p.parse_args(argv)
    assets = Assets(args.shared)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    r: dict[str, Any] = {
        "schema": "edge-agent.bench-light/1", "quick": args.quick, "machine": machine_info(),
    }  # fmt: skip
    _log("gate on/off and the naive loop")
    r["gate"] = gate_section(assets, 300 if args.quick else None)
    _log("onnxruntime threads / spin / graph optimisation")
    r["onnxruntime"] = ort_section(assets, 5 if args.quick else 40)
    _log("regions")
    r["regions"] = compare_regions(
        assets.model(DEFAULT_MODEL),
        assets.media / PEDESTRIANS,
        max_frames=60 if args.quick else 240,
    )
    if not args.no_agent:
        r["agent"] = agent_section(assets, 8 if args.quick else 30, 10 if args.quick else 150)
    r["machine"]["load_average_end"] = load_average()
    r["duration_s"] = round(time.perf_counter() - started, 1)
    (args.out / "light.json").write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    chart(r, args.out / "light.png")
    print(json.dumps(r, indent=2))
    print(f"\nwritten: {args.out / 'light.json'}, {args.out / 'light.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
