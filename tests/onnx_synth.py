"""Tiny synthetic ONNX graphs that look like Ultralytics exports, built with onnx.helper.

The output is a constant tensor encoding known boxes, plus ``0 * mean(input)`` so the graph
really consumes its input: ``output = const + ReduceMean(images) * 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class Row:
    """One prediction in model-input pixels: centre, size, class and score (obj for v5)."""

    cx: float
    cy: float
    w: float
    h: float
    class_id: int
    score: float
    obj: float = 1.0


def cells(size: int, strides: Sequence[int] = (8, 16, 32)) -> int:
    return sum(math.ceil(size / s) ** 2 for s in strides)


def yolov5_output(size: int, rows: Sequence[Row], classes: int = 80) -> np.ndarray:
    """``[1, 3 * cells, 5 + classes]``: cx, cy, w, h, obj, class scores; rows at the front."""
    out = np.zeros((1, 3 * cells(size), 5 + classes), np.float32)
    for i, r in enumerate(rows):
        out[0, i, :5] = (r.cx, r.cy, r.w, r.h, r.obj)
        out[0, i, 5 + r.class_id] = r.score
    return out


def yolov8_output(size: int, rows: Sequence[Row], classes: int = 80) -> np.ndarray:
    """``[1, 4 + classes, cells]``: cx, cy, w, h, class scores; rows at the end."""
    out = np.zeros((1, 4 + classes, cells(size)), np.float32)
    for i, r in enumerate(rows):
        col = out.shape[2] - 1 - i
        out[0, :4, col] = (r.cx, r.cy, r.w, r.h)
        out[0, 4 + r.class_id, col] = r.score
    return out


def constant_model(
    path: Path,
    outputs: dict[str, np.ndarray],
    input_shape: Sequence[int | str] = (1, 3, 320, 320),
    input_name: str = "images",
) -> Path:
    """Save a graph whose outputs are the given constants (plus 0 * mean of the input)."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_const"))
        nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape))
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        graph_outputs,
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
