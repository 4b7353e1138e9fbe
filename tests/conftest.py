"""Shared test fixtures: where the real models and footage live."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.node.logs import HANDLER_NAME

pytest_plugins = [
    "tests.mqtt_support",  # the real-Mosquitto ``broker`` fixture
    "tests.rtsp_support",  # the real-RTSP-server ``make_server`` fixture
]

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGE_AGENT_SHARED", REPO.parent / "shared")).resolve()
MODELS = SHARED / "models"
MEDIA = SHARED / "media"


@pytest.fixture(autouse=True)
def _agent_logging_ends_with_its_test() -> Iterator[None]:
    """A test that runs the CLI gets ``setup_logging``'s handler on the root logger, writing
    to pytest's capture of that test's stderr, which closes with the test: take the handler
    off and put the level back, so no later log line goes to a closed stream."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}: tests read real models and footage there")
    return SHARED


@pytest.fixture(scope="session")
def yolox_model(shared_dir: Path) -> Path:
    return MODELS / "yolox_nano_416.onnx"
