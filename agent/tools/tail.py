"""``edge-agent tail``: print what a commune server receives, as it arrives.

A plain MQTT subscriber (it is a consumer, not part of the agent's pipeline): events,
heartbeats and status changes as one readable line each (or JSON lines), snapshots noted and
optionally saved to a folder. It reaches a secured broker with the same TLS context as the
agent (:mod:`agent.delivery.tls`), from the agent's config file or from command-line options.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig, read_secret
from agent.delivery.tls import build_context, describe_ssl_text, describe_tls_error

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
    """A subscriber thread that calls ``out`` with one line per message.

    It connects (over ``tls`` when given, with ``username``/``password`` when given) and
    reconnects with capped backoff on its own thread, logging each distinct reason it cannot
    connect once (a TLS handshake failure by name, a refused CONNACK by reason code).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        out: Callable[[str], None],
        *,
        as_json: bool = False,
        snapshots: Path | None = None,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.topic, self.out, self.as_json, self.snapshots = topic, out, as_json, snapshots
        self.count = 0
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self.subscribed.set()
        self._client.on_message = self._on_message
        self._client.on_log = self._on_log
        # only loop() writes (not connect()): a broker's TLS alert is then read, not lost
        self._client.on_socket_register_write = lambda *_a: None
        self._socket_error: str | None = None
        if tls is not None:
            self._client.tls_set_context(tls)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._host, self._port = host, port
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: set[str] = set()

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            self._report(f"broker refused the connection: {reason} (reason code {reason.value})")
        else:
            self._reported.clear()
            client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.count += 1
        if self.snapshots is not None and _kind(msg.topic) == "snapshots":
            self.snapshots.mkdir(parents=True, exist_ok=True)
            (self.snapshots / f"{msg.topic.rsplit('/', 1)[-1]}.jpg").write_bytes(bytes(msg.payload))
        payload = bytes(msg.payload)
        line = (_json_line if self.as_json else format_message)(msg.topic, payload, msg.retain)
        self.out(line)

    def _on_log(self, _c: mqtt.Client, _u: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and "on socket: " in buf:  # e.g. a TLS alert
            self._socket_error = describe_ssl_text(buf.split("on socket: ", 1)[1])

    def _report(self, why: str) -> None:
        self.last_error = why
        if why not in self._reported:
            self._reported.add(why)
            log.warning("tail: %s:%d: %s; retrying", self._host, self._port, why)

    def _connect_once(self) -> None:
        self._socket_error = None
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except ssl.SSLError as exc:
            self._report(f"TLS handshake failed: {describe_tls_error(exc)}")
            return
        except OSError as exc:
            self._report(f"cannot connect: {exc}")
            return
        while not self._stop.is_set():
            if self._client.loop(0.2) != mqtt.MQTT_ERR_SUCCESS:
                what = "connection lost" if self.subscribed.is_set() else "connection closed"
                self._report(f"{what}: {self._socket_error or 'no reason given'}")
                return

    def _run(self) -> None:
        delay = 0.25
        while not self._stop.is_set():
            self._connect_once()
            if self.subscribed.is_set():
                delay = 0.25
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)
        if self._client.disconnect() == mqtt.MQTT_ERR_SUCCESS:
            self._client.loop(0.1)  # write the DISCONNECT (only loop() writes)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tail", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; whether it ended within ``timeout``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True


def tail(
    mqtt_cfg: MqttConfig,
    topic: str,
    *,
    as_json: bool,
    snapshots: Path | None,
    where: str = "mqtt",
) -> int:
    """Run until interrupted; ``mqtt_cfg`` gives the broker, TLS and credentials (the
    agent's own ``mqtt`` section, or one made from the command line). ConfigError for bad
    TLS material or an unreadable password file, its fields named under ``where``."""
    tls = build_context(mqtt_cfg.tls, f"{where}.tls") if mqtt_cfg.tls.enabled else None
    password = read_secret(mqtt_cfg.password, mqtt_cfg.password_file, f"{where}.password_file")
    t = Tail(
        mqtt_cfg.host,
        mqtt_cfg.port,
        topic,
        lambda line: print(line, flush=True),
        as_json=as_json,
        snapshots=snapshots,
        tls=tls,
        username=mqtt_cfg.username,
        password=password,
    )
    t.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        t.stop()
    return 0
