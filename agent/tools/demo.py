"""``edge-agent demo``: a throwaway local Mosquitto, the agent on a sample clip with the
default model, and a live view (``tail``) of what the commune server receives.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from agent.config import (
    CameraConfig,
    DetectorConfig,
    HeartbeatConfig,
    MqttConfig,
    OutboxConfig,
    Settings,
)
from agent.errors import AgentError
from agent.node.app import App
from agent.tools.localbroker import LocalBroker
from agent.tools.tail import Tail

log = logging.getLogger(__name__)
CLIP = "media/one-by-one-person-detection.mp4"
MODEL = "models/yolox_nano_416.onnx"


def shared_dir() -> Path:
    """``../shared`` beside the checkout (or ``$EDGE_AGENT_SHARED``)."""
    env = os.environ.get("EDGE_AGENT_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared", Path(__file__).resolve().parents[3] / "shared"]
    for c in candidates:
        if (c / MODEL).is_file():
            return c
    raise AgentError(f"cannot find the shared models and media (looked in {candidates})")


def demo_settings(clip: Path, model: Path, port: int, data: Path, realtime: bool) -> Settings:
    return Settings(
        node_id="demo-node",
        commune_id="demo-commune",
        mqtt=MqttConfig(host="127.0.0.1", port=port),
        cameras=[CameraConfig(id="demo-cam", source=str(clip), detect_fps=5, realtime=realtime)],
        detector=DetectorConfig(model=model),
        outbox=OutboxConfig(path=data / "outbox.db"),
        heartbeat=HeartbeatConfig(interval_s=5),
    )


def _summary(lines: list[str]) -> str:
    kinds = Counter(line.split()[1] if line[:1] != " " else line.split()[0] for line in lines)
    events = Counter(line.split()[5] for line in lines if " EVENT " in line)
    return f"received {len(lines)} messages: {dict(kinds)}; events by type: {dict(events)}"


def run_demo(*, clip: Path | None, model: Path | None, realtime: bool) -> int:
    shared = shared_dir() if clip is None or model is None else None
    clip = clip or (shared / CLIP if shared else Path(CLIP))
    model = model or (shared / MODEL if shared else Path(MODEL))
    data = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    lines: list[str] = []

    def show(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    with LocalBroker() as broker:
        print(f"demo: mosquitto on 127.0.0.1:{broker.port}; subscriber on camnet/#", flush=True)
        print(f"demo: agent on {clip.name} with {model.name} (snapshots in {data})", flush=True)
        tail = Tail(broker.host, broker.port, "camnet/#", show, snapshots=data / "snapshots")
        tail.start()
        tail.subscribed.wait(5)
        settings = demo_settings(clip, model, broker.port, data, realtime)
        code = App(settings).run_until_done()
        time.sleep(1.0)  # let the last messages reach the subscriber
        tail.stop()
    print(f"demo: {_summary(lines)}", flush=True)
    print(f"demo: snapshots saved in {data / 'snapshots'}", flush=True)
    if not lines:
        print("demo: the subscriber received nothing", file=sys.stderr)
        return 1
    return code
