"""Shared test fixtures: where the real models and footage live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.mqtt_support",  # the real-Mosquitto ``broker`` fixture
    "tests.rtsp_support",  # the real-RTSP-server ``make_server`` fixture
]

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGE_AGENT_SHARED", REPO.parent / "shared")).resolve()
MODELS = SHARED / "models"
MEDIA = SHARED / "media"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}: tests read real models and footage there")
    return SHARED


@pytest.fixture(scope="session")
def yolox_model(shared_dir: Path) -> Path:
    return MODELS / "yolox_nano_416.onnx"
