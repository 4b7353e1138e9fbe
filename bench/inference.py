"""Bare inference (``session.run`` on a ready blob), preprocess, decode + NMS, ``detect()``.

All on the same real frame with the agent's session options (threads=2, spinning off),
interleaved run by run so that machine noise hits them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.vision.detector import load_detector
from agent.vision.detector.decode import nms
from agent.vision.detector.families import SPECS
from agent.vision.detector.session import DEFAULT_MAX_DET, open_session, session_options
from bench.common import Image, detector_config, summary_ms


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class BareInference:
    """``session.run`` on a ready blob of ``image``: the agent's session options, no pre/post.

    :meth:`sample` can be called between pipeline frames, so the baseline is measured under
    the same machine load as the pipeline itself.
    """

    def __init__(self, model: Path, image: Image) -> None:
        cfg = detector_config(model)
        detector = load_detector(cfg)
        self.family = detector.family
        self.input_size = detector.input_size
        detector.close()
        self._session = open_session(model, session_options(cfg.threads, cfg.spin))
        blob = SPECS[self.family].preprocess(image, self.input_size)[0]
        self._feed = {self._session.get_inputs()[0].name: blob}
        self.threads, self.spin = cfg.threads, cfg.spin
        self.samples: list[float] = []

    def outputs(self) -> list[Any]:
        """The model's outputs for the image (for timing the decode alone)."""
        return list(self._session.run(None, self._feed))

    def run_once(self) -> float:
        """One inference; its seconds (not recorded)."""
        return _timed(lambda: self._session.run(None, self._feed))

    def sample(self, n: int) -> None:
        """Record ``n`` timed inferences."""
        self.samples.extend(self.run_once() for _ in range(n))


def postprocess_fn(model: Path, bare: BareInference) -> Callable[[], object]:
    """Decode + NMS of one real output of ``bare``'s model, as ``detect()`` does them."""
    cfg = detector_config(model)
    spec = SPECS[bare.family]
    outputs = bare.outputs()

    def post() -> object:
        boxes, scores, class_ids = spec.decode(outputs, bare.input_size, cfg.min_score)
        return nms(boxes, scores, class_ids, cfg.nms_iou, DEFAULT_MAX_DET)

    return post


def inference_stats(model: Path, image: Image, *, warmup: int, runs: int) -> dict[str, Any]:
    """p50/p95 of bare inference, preprocess, decode + NMS and the whole ``detect()``.

    The four are interleaved run by run. The overhead share is measured directly,
    ``(pre + post) / (pre + post + inference)`` on the p50s, rather than by subtracting two
    noisy totals.
    """
    detector = load_detector(detector_config(model))
    bare = BareInference(model, image)
    spec = SPECS[bare.family]
    post = postprocess_fn(model, bare)
    steps: dict[str, Callable[[], object]] = {
        "inference": bare.run_once,
        "preprocess": lambda: spec.preprocess(image, bare.input_size),
        "postprocess": post,
        "detect": lambda: detector.detect(image),
    }
    detections = 0
    for _ in range(warmup):
        detections = len(detector.detect(image))
        bare.run_once()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(runs):
        for name, fn in steps.items():
            times[name].append(_timed(fn))
    detector.close()
    ms = {name: summary_ms(samples) for name, samples in times.items()}
    overhead = ms["preprocess"]["p50"] + ms["postprocess"]["p50"]
    total = overhead + ms["inference"]["p50"]
    return {
        "model": model.name,
        "family": bare.family,
        "input": list(bare.input_size),
        "threads": bare.threads,
        "spin": bare.spin,
        "detections_on_frame": detections,
        **{f"{name}_ms": summary for name, summary in ms.items()},
        "overhead_ms_p50": round(overhead, 3),
        "overhead_share": round(overhead / total, 3) if total > 0 else 0.0,
    }
