"""``python -m bench [--quick] [--out DIR] [--shared DIR]``: run every section, write the JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from bench.common import (
    DEFAULT_MODEL,
    DEFAULT_SHARED,
    FULL,
    MAIN_CLIP,
    MODEL_FILES,
    OTHER_CLIP,
    QUICK,
    SAMPLE_FRAME,
    Assets,
    Plan,
    read_frame,
    summary_ms,
)
from bench.decode import decode_fps
from bench.inference import BareInference, inference_stats
from bench.link import QUICK as LINK_QUICK
from bench.link import Plan as LinkPlan
from bench.link import link_stats
from bench.machine import load_average, machine_info
from bench.outbox_rate import outbox_stats
from bench.pipeline import EVERY_FRAME_FPS, Probe, run_pipeline
from bench.ratios import all_ratios, limit_ratios
from bench.report import table
from bench.rss import DEFAULT_DETECT_FPS, measure_rss
from bench.snapshot import render_jpeg, snapshot_stats
from bench.wear import wear_stats

SCHEMA = "edge-agent.bench/1"
T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer frames and runs: a smoke test")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="models/ and media/")
    return p


def _section(name: str, fn: Callable[[], T]) -> T:
    """Run one section, logging its name and duration on stderr."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = fn()
    print(f"[bench] {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def _decode(assets: Assets, plan: Plan) -> dict[str, Any]:
    return {
        "main": decode_fps(assets.clip(MAIN_CLIP), max_frames=plan.frames),
        "other": decode_fps(
            assets.clip(OTHER_CLIP), max_frames=plan.other_clip_frames,
            min_frames=plan.other_clip_frames,
        ),
    }  # fmt: skip


def _inference(assets: Assets, plan: Plan) -> dict[str, Any]:
    image = read_frame(assets.clip(MAIN_CLIP), SAMPLE_FRAME)
    return {
        name: inference_stats(assets.model(name), image, warmup=plan.warmup, runs=plan.runs)
        for name in MODEL_FILES
    }


def _every_frame(assets: Assets, plan: Plan, r: dict[str, Any]) -> dict[str, Any]:
    """Detect on every frame; the limit's inference p50 is sampled between its frames.

    Also reported: the limit from the mean of those samples (throughput is a mean, so under
    load its long tail shows up here and not in a p50) and from the inference section's p50.
    """
    model, clip = assets.model(DEFAULT_MODEL), assets.clip(MAIN_CLIP)
    bare = BareInference(model, read_frame(clip, SAMPLE_FRAME))
    for _ in range(plan.warmup):
        bare.run_once()
    probe = Probe(plan.probe_every, lambda: bare.sample(plan.probe_runs))
    res = run_pipeline(model, clip, detect_fps=EVERY_FRAME_FPS, max_frames=plan.frames, probe=probe)
    during = summary_ms(bare.samples)
    decode = r["decode"]["main"]["fps"]
    section_s = r["inference"][DEFAULT_MODEL]["inference_ms"]["p50"] / 1000
    return {
        **res,
        "decode_fps": decode,
        "inference_ms_during_run": during,
        **limit_ratios(decode, during["p50"] / 1000, res["fps"]),
        "with_inference_mean": limit_ratios(decode, during["mean"] / 1000, res["fps"]),
        "with_inference_section_p50": limit_ratios(decode, section_s, res["fps"]),
    }


def _default(assets: Assets, plan: Plan) -> dict[str, Any]:
    return run_pipeline(
        assets.model(DEFAULT_MODEL), assets.clip(MAIN_CLIP),
        detect_fps=DEFAULT_DETECT_FPS, max_frames=plan.frames,
    )  # fmt: skip


def _outbox(assets: Assets, plan: Plan, out: Path) -> dict[str, Any]:
    jpeg = render_jpeg(read_frame(assets.clip(OTHER_CLIP), 0))
    return outbox_stats(out, jpeg, puts=plan.outbox_puts, max_s=plan.outbox_max_s)


def run(plan: Plan, assets: Assets, out: Path, quick: bool) -> dict[str, Any]:
    """Every section in order; the JSON-ready result."""
    started = time.perf_counter()
    main_clip, model = assets.clip(MAIN_CLIP), assets.model(DEFAULT_MODEL)
    r: dict[str, Any] = {
        "schema": SCHEMA,
        "quick": quick,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": dataclasses.asdict(plan),
        "shared": str(assets.root.resolve()),
        "machine": _section("machine", machine_info),
    }
    r["decode"] = _section("decode", lambda: _decode(assets, plan))
    r["inference"] = _section("inference", lambda: _inference(assets, plan))
    r["pipeline_every_frame"] = _section(
        "pipeline every frame", lambda: _every_frame(assets, plan, r)
    )
    r["pipeline_default"] = _section("pipeline detect_fps=5", lambda: _default(assets, plan))
    image = read_frame(main_clip, SAMPLE_FRAME)
    r["snapshot"] = _section(
        "snapshot", lambda: snapshot_stats(image, warmup=plan.warmup, runs=plan.snapshot_runs)
    )
    r["outbox"] = _section("outbox", lambda: _outbox(assets, plan, out))
    wear_events = 40 if quick else 200
    r["wear"] = _section("outbox wear (fsyncs, bytes)", lambda: wear_stats(out, events=wear_events))
    link_plan = LINK_QUICK if quick else LinkPlan()
    r["link"] = _section("link faults (proxy, broker)", lambda: link_stats(out, link_plan))
    r["rss"] = _section("peak RSS (subprocess)", lambda: measure_rss(model, main_clip, plan.frames))
    r["ratios"] = all_ratios(r)
    r["machine"]["load_average_end"] = load_average()
    r["duration_s"] = round(time.perf_counter() - started, 1)
    return r


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    assets = Assets(args.shared)
    missing = assets.missing()
    if missing:
        print(f"bench: missing files: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(QUICK if args.quick else FULL, assets, args.out, args.quick)
    path = args.out / "bench.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
