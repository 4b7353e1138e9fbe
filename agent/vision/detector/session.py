"""The onnxruntime detector: one session, one family spec, the configured label filter."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from agent.config import DetectorConfig, Family
from agent.domain import COCO_LABELS, Detections
from agent.errors import ConfigError, DetectorError, ModelError
from agent.tools.models import missing_model_hint
from agent.vision.detector.decode import nms
from agent.vision.detector.families import (
    SPECS,
    FamilyName,
    FamilySpec,
    check_layout,
    class_count,
    detect_family,
    input_size_of,
)
from agent.vision.detector.preprocess import boxes_to_original

DEFAULT_MAX_DET = 100
CPU = "CPUExecutionProvider"
GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

log = logging.getLogger(__name__)


def session_options(threads: int, spin: bool, graph: str = "all") -> ort.SessionOptions:
    """Session options: ``threads`` intra-op workers, optionally spinning, quiet logs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = GRAPH_LEVELS[graph]
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


def choose_providers(
    wanted: Sequence[str], available: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The wanted providers this onnxruntime has, in order, the CPU always last; and the missing.

    Pure: ``available`` is ``onnxruntime.get_available_providers()``.
    """
    have = [p for p in wanted if p in available and p != CPU]
    missing = [p for p in wanted if p not in available]
    return [*have, CPU], missing


def open_session(
    path: Path, opts: ort.SessionOptions, providers: Sequence[str] = (CPU,)
) -> ort.InferenceSession:
    """An onnxruntime session, or :class:`ModelError` naming ``path`` and the reason.

    Providers this onnxruntime build lacks are skipped with one warning; the CPU is the
    last resort.
    """
    if not path.exists():
        raise ModelError(f"cannot load model {path}: file not found; {missing_model_hint(path)}")
    if not path.is_file():
        raise ModelError(f"cannot load model {path}: not a regular file")
    chosen, missing = choose_providers(providers, ort.get_available_providers())
    if missing:
        log.warning(
            "execution provider(s) %s not available in this onnxruntime (has %s): using %s",
            ", ".join(missing), ", ".join(ort.get_available_providers()), ", ".join(chosen),
        )  # fmt: skip
    try:
        return ort.InferenceSession(str(path), opts, providers=chosen)
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        raise ModelError(f"cannot load model {path}: {_ort_reason(exc)}") from exc


def _ort_reason(exc: Exception) -> str:
    """The first line of an onnxruntime error without its ``[ONNXRuntimeError] : 7 :`` prefix."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", lines[0])


def class_thresholds(
    labels: Sequence[str],
    min_score: float,
    label_min_score: Mapping[str, float],
    table: Sequence[str] = COCO_LABELS,
) -> npt.NDArray[np.float32]:
    """Per class id of ``table``: the minimum score to report it, ``inf`` if not wanted."""
    unknown = sorted(set(labels) - set(table))
    if unknown:
        raise ConfigError([("detector.labels", f"labels the model does not know: {unknown}")])
    thresholds = np.full(len(table), np.inf, dtype=np.float32)
    for label in labels:
        thresholds[table.index(label)] = label_min_score.get(label, min_score)
    return thresholds


class OnnxDetector:
    """A :class:`~agent.vision.detector.Detector` running an ONNX model with onnxruntime on the CPU.

    ``detect`` keeps no state between calls. ``thresholds`` holds the minimum score per class
    id of ``labels`` (``inf``: never reported); see :func:`class_thresholds`.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        spec: FamilySpec,
        thresholds: npt.NDArray[np.float32],
        nms_iou: float,
        *,
        max_det: int = DEFAULT_MAX_DET,
        labels: tuple[str, ...] = COCO_LABELS,
    ) -> None:
        inp = session.get_inputs()[0]
        self._session: ort.InferenceSession | None = session
        self._input_name: str = inp.name
        self._input_size = input_size_of(inp.shape, "model")
        self._spec = spec
        self._thresholds = thresholds
        self._decode_threshold = float(thresholds[np.isfinite(thresholds)].min(initial=1.0))
        self._nms_iou = nms_iou
        self._max_det = max_det
        self._labels = labels

    @classmethod
    def from_config(cls, cfg: DetectorConfig, max_det: int = DEFAULT_MAX_DET) -> OnnxDetector:
        """Load ``cfg.model``; detect its family unless ``cfg.family`` names one."""
        thresholds = class_thresholds(cfg.labels, cfg.min_score, cfg.label_min_score)
        opts = session_options(cfg.threads, cfg.spin, cfg.graph_optimization)
        session = open_session(cfg.model, opts, cfg.providers)
        if len(session.get_inputs()) != 1:
            raise ModelError(f"{cfg.model} has {len(session.get_inputs())} inputs, expected 1")
        family = resolve_family(session, cfg.family, str(cfg.model))
        classes = class_count(family, [o.shape for o in session.get_outputs()])
        if classes is not None and classes != len(COCO_LABELS):
            raise ModelError(
                f"{cfg.model} predicts {classes} classes; the agent's label table is the "
                f"{len(COCO_LABELS)} COCO classes"
            )
        return cls(session, SPECS[family], thresholds, cfg.nms_iou, max_det=max_det)

    @property
    def family(self) -> FamilyName:
        return self._spec.name

    @property
    def input_size(self) -> tuple[int, int]:
        """Model input ``(width, height)``."""
        return self._input_size

    @property
    def providers(self) -> list[str]:
        """The execution providers the session runs on, best first."""
        return [] if self._session is None else list(self._session.get_providers())

    def detect(self, image: npt.NDArray[np.uint8]) -> Detections:
        """Detections of the configured labels in a HxWx3 uint8 BGR image, in its pixels.

        Best score first. ``ValueError`` for anything but a non-empty HxWx3 uint8 image,
        :class:`DetectorError` when inference or decoding fails.
        """
        if self._session is None:
            raise DetectorError("detector is closed")
        blob, placement = self._spec.preprocess(image, self._input_size)
        try:
            outputs = self._session.run(None, {self._input_name: blob})
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise DetectorError(f"inference failed ({self.family}): {exc}") from exc
        try:
            boxes, scores, class_ids = self._spec.decode(
                outputs, self._input_size, self._decode_threshold
            )
        except (ValueError, IndexError) as exc:
            raise DetectorError(f"cannot decode {self.family} output: {exc}") from exc
        known = class_ids < len(self._labels)  # guards models with dynamic output shapes
        wanted = known & (scores >= self._thresholds[np.where(known, class_ids, 0)])
        boxes, scores, class_ids = boxes[wanted], scores[wanted], class_ids[wanted]
        keep = nms(boxes, scores, class_ids, self._nms_iou, self._max_det)
        height, width = image.shape[:2]
        xyxy = boxes_to_original(boxes[keep], placement, (width, height))
        return Detections(xyxy, scores[keep], class_ids[keep], self._labels)

    def close(self) -> None:
        """Release the session; ``detect`` fails afterwards."""
        self._session = None

    def __enter__(self) -> OnnxDetector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def resolve_family(session: ort.InferenceSession, family: Family, model: str) -> FamilyName:
    """``family`` if it names one (checked against the graph), else the detected family."""
    outputs = session.get_outputs()
    if family != "auto":
        input_size_of(session.get_inputs()[0].shape, model)
        check_layout(family, len(outputs), model)
        return family
    return detect_family(
        session.get_inputs()[0].shape,
        [o.name for o in outputs],
        [o.shape for o in outputs],
        model,
    )
