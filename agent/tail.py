"""``edge-agent tail``: print what a commune server receives, as it arrives.

A plain MQTT subscriber (it is a consumer, not part of the agent's pipeline): events,
heartbeats and status changes as one readable line each (or JSON lines), snapshots noted and
optionally saved to a folder.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)


def _hhmmss(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).astimezone().strftime("%H:%M:%S")


def _kind(topic: str) -> str:
    parts = topic.split("/")
    return "snapshots" if len(parts) >= 5 and parts[-2] == "snapshots" else parts[-1]


def _event_line(node: str, p: dict[str, Any]) -> str:
    box = ",".join(f"{v:.2f}" for v in p.get("box", []))
    return (
        f"{_hhmmss(p.get('ts'))} EVENT  {node} {p.get('camera')} #{p.get('seq')} "
        f"{str(p.get('type')).upper():6} {p.get('label')} {p.get('score')} [{box}] "
        f"event={str(p.get('event_id'))[:8]} snapshot={'yes' if p.get('has_snapshot') else 'no'}"
    )


def _heartbeat_line(node: str, p: dict[str, Any]) -> str:
    sysd, box = p.get("system", {}), p.get("outbox", {})
    cams = " ".join(
        f"{c.get('id')}:{c.get('state')} in={c.get('fps_in')} det={c.get('fps_detected')}fps "
        f"p50={c.get('inference_ms_p50')}ms"
        for c in p.get("cameras", [])
    )
    return (
        f"{_hhmmss(p.get('ts'))} HEART  {node} up={p.get('uptime_s')}s "
        f"cpu={sysd.get('cpu_percent')}% rss={int(sysd.get('agent_rss_bytes', 0)) // 2**20}MB "
        f"outbox={box.get('depth')} {cams}"
    )


def format_message(topic: str, payload: bytes, retained: bool) -> str:
    """One human-readable line for a message on the contract's topics."""
    node, kind = "/".join(topic.split("/")[1:3]), _kind(topic)
    if kind == "snapshots":
        return f"{'':8} SNAP   {node} {topic.rsplit('/', 1)[-1][:8]} jpeg {len(payload)} bytes"
    try:
        p = json.loads(payload)
    except ValueError:
        return f"{'':8} ?      {topic} {len(payload)} bytes (not JSON)"
    if kind == "events":
        return _event_line(node, p)
    if kind == "heartbeat":
        return _heartbeat_line(node, p)
    if kind == "status":
        return f"{'':8} STATUS {node} {p.get('state')}{' (retained)' if retained else ''}"
    return f"{'':8} {kind.upper():6} {node} {payload[:200]!r}"


def _json_line(topic: str, payload: bytes, retained: bool) -> str:
    if _kind(topic) == "snapshots":
        body: Any = {"jpeg_bytes": len(payload)}
    else:
        try:
            body = json.loads(payload)
        except ValueError:
            body = {"raw_bytes": len(payload)}
    return json.dumps({"topic": topic, "retained": retained, "payload": body})


class Tail:
    """A subscriber thread that calls ``out`` with one line per message."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        out: Callable[[str], None],
        *,
        as_json: bool = False,
        snapshots: Path | None = None,
    ) -> None:
        self.topic, self.out, self.as_json, self.snapshots = topic, out, as_json, snapshots
        self.count = 0
        self.subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self.subscribed.set()
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.count += 1
        if self.snapshots is not None and _kind(msg.topic) == "snapshots":
            self.snapshots.mkdir(parents=True, exist_ok=True)
            (self.snapshots / f"{msg.topic.rsplit('/', 1)[-1]}.jpg").write_bytes(bytes(msg.payload))
        payload = bytes(msg.payload)
        line = (_json_line if self.as_json else format_message)(msg.topic, payload, msg.retain)
        self.out(line)

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def tail(host: str, port: int, topic: str, *, as_json: bool, snapshots: Path | None) -> int:
    """Run until interrupted."""
    t = Tail(host, port, topic, lambda line: print(line, flush=True), as_json=as_json,
             snapshots=snapshots)  # fmt: skip
    t.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        t.stop()
    return 0
