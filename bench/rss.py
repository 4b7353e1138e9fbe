"""Peak memory of one camera with the default model, in a fresh interpreter.

``python -m bench.rss --model M --clip C [--frames N]`` runs the pipeline at the default
``detect_fps`` over the clip, rendering every snapshot as the agent would, and prints one JSON
object: RSS after the imports, after loading the model, and the peak (``ru_maxrss``).
:func:`measure_rss` starts it from the benchmark and reads that line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from bench.common import REPO
from bench.pipeline import CountingSink, build_pipeline, play

DEFAULT_DETECT_FPS = 5.0


def _rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def child(model: Path, clip: Path, frames: int | None) -> dict[str, Any]:
    """Run one camera and report its memory (call in a fresh process)."""
    after_imports = _rss_mb()
    sink = CountingSink(render_snapshots=True)
    pipeline = build_pipeline(model, DEFAULT_DETECT_FPS, sink)
    after_load = _rss_mb()
    run = play(pipeline, clip, frames)
    return {
        "model": model.name,
        "clip": clip.name,
        "detect_fps": DEFAULT_DETECT_FPS,
        "frames": run.frames,
        "events": sink.counts(),
        "snapshots_rendered": sink.snapshot_requests,
        "rss_after_imports_mb": after_imports,
        "rss_after_model_load_mb": after_load,
        "rss_end_mb": _rss_mb(),
        "peak_rss_mb": _peak_mb(),
        "wall_s": round(run.wall_s, 3),
    }


def measure_rss(
    model: Path, clip: Path, frames: int | None, timeout_s: float = 300
) -> dict[str, Any]:
    """:func:`child` in a fresh ``python -m bench.rss`` subprocess; its JSON result."""
    cmd = [sys.executable, "-m", "bench.rss", "--model", str(model), "--clip", str(clip)]
    if frames is not None:
        cmd += ["--frames", str(frames)]
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.rss failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(child(args.model, args.clip, args.frames)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
