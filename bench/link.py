"""The delivery path under link faults: outbox -> publisher -> MQTT link -> (fault proxy) ->
real Mosquitto -> a real subscriber, all on 127.0.0.1, with the agent's own components.

* ``flap``: duplicate factor (messages received / unique ids) and losses while our proxy
  (tests/faultproxy.py) flaps the link (up, then every connection reset) under a steady stream.
* ``backlog``: a broker that was down comes back: seconds from the link's CONNACK until a
  backlog of N queued events has reached the subscriber, and the delivery rate.
* ``latency``: event latency (commit -> subscriber receive, p50/p95) on a link throttled to
  32 KiB/s each way, without and with a backlog of snapshots committed just before.

Counts and ratios only; nothing here asserts a time. Re-run this part alone with
``python -m bench.link`` (``make bench-link``): it writes ``bench-results/link.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import MqttConfig, OutboxConfig
from agent.contract import Topics
from agent.delivery.mqtt_link import MqttLink
from agent.delivery.outbox import Outbox, OutMessage
from agent.delivery.publisher import Publisher
from agent.tools.localbroker import LocalBroker
from tests.faultproxy import FaultProxy

BASE = "camnet/bench-commune/bench-node"
THROTTLE = 32 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    flap_s: float = 12.0
    flap_up_s: float = 1.5
    flap_down_s: float = 1.0
    flap_rate_hz: float = 20.0
    backlog_events: int = 1000
    latency_events: int = 32
    latency_interval_s: float = 0.25
    snapshots: int = 12
    snapshot_bytes: int = 30_000


QUICK = Plan(flap_s=4.0, backlog_events=200, latency_events=8, snapshots=3)


class Recorder:
    """A real QoS 1 subscriber: (arrival monotonic time, topic, payload) of every message."""

    def __init__(self, port: int) -> None:
        self._cond = threading.Condition()
        self.got: list[tuple[float, str, bytes]] = []
        ready = threading.Event()
        self._c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )  # fmt: skip
        self._c.on_connect = lambda c, *_a: c.subscribe(f"{BASE}/#", qos=1)
        self._c.on_subscribe = lambda *_a: ready.set()
        self._c.on_message = self._on_message
        self._c.connect("127.0.0.1", port, 30)
        self._c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("bench subscriber: no SUBACK")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.got.append((time.monotonic(), msg.topic, msg.payload))
            self._cond.notify_all()

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            got = list(self.got)
        return [(t, json.loads(p)) for t, topic, p in got if topic.endswith("/events")]

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


@dataclass
class Node:
    outbox: Outbox
    link: MqttLink
    publisher: Publisher
    n: int = 0

    def event(self) -> str:
        self.n += 1
        msg_id = f"e{self.n:05d}"
        body = json.dumps({"id": msg_id, "t": time.monotonic()}).encode()
        self.outbox.put([OutMessage("event", f"{BASE}/events", body, 1, msg_id, msg_id)])
        return msg_id

    def snapshot(self, size: int) -> None:
        self.n += 1
        msg_id = f"s{self.n:05d}"
        topic = f"{BASE}/snapshots/{msg_id}"
        self.outbox.put([OutMessage("snapshot", topic, b"\xff" * size, 1, f"{msg_id}.jpg", msg_id)])


@contextmanager
def node(folder: Path, port: int) -> Iterator[Node]:
    cfg = MqttConfig(port=port, keepalive_s=5, reconnect_min_s=0.05, reconnect_max_s=0.5)
    outbox = Outbox.open(OutboxConfig(path=folder / f"{uuid.uuid4().hex[:6]}.db"))
    link = MqttLink(cfg, BASE, f"bench-{uuid.uuid4().hex[:6]}", b"offline", lambda: b"online")
    pub = Publisher(outbox, link, cfg, Topics(*BASE.split("/")))
    link.start()
    pub.start()
    try:
        yield Node(outbox, link, pub)
    finally:
        pub.stop()
        link.stop(b"offline")
        outbox.close()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000, 1)


def flap(folder: Path, plan: Plan) -> dict[str, Any]:
    with LocalBroker(folder / "broker-flap") as broker, FaultProxy(broker.port) as proxy:
        sub = Recorder(broker.port)
        with node(folder, proxy.port) as n:
            n.link.wait_connected(10)
            flapping = proxy.flap(plan.flap_up_s, plan.flap_down_s, plan.flap_s)
            sent: list[str] = []
            while flapping.is_alive():
                sent.append(n.event())
                time.sleep(1 / plan.flap_rate_hz)
            want = set(sent)
            sub.wait(lambda: want <= {e["id"] for _, e in sub.events()}, 60)
            link = n.link.status()
        sub.close()
        got = [e["id"] for _, e in sub.events()]
    unique = len(set(got))
    return {
        "sent": len(sent), "received": len(got), "unique": unique,
        "lost": len(set(sent) - set(got)),
        "duplicate_factor": round(len(got) / unique, 4) if unique else None,
        "down_phases": proxy.stats().flaps, "disconnects": link.disconnects,
    }  # fmt: skip


def backlog(folder: Path, plan: Plan) -> dict[str, Any]:
    broker = LocalBroker(folder / "broker-backlog")  # down while the backlog builds
    with node(folder, broker.port) as n:
        sent = {n.event() for _ in range(plan.backlog_events)}
        broker.start()
        try:
            sub = Recorder(broker.port)
            if not n.link.wait_connected(30):
                return {"status": "failed", "reason": "no connection after the broker started"}
            connected = time.monotonic()
            done = sub.wait(lambda: sent <= {e["id"] for _, e in sub.events()}, 120)
            took = time.monotonic() - connected
            got = len(sub.events())
            sub.close()
        finally:
            broker.stop()
    return {
        "events": len(sent), "delivered_all": done, "received": got,
        "seconds_after_connack": round(took, 3),
        "events_per_s": round(len(sent) / took, 1) if took > 0 else None,
    }  # fmt: skip


def latency(folder: Path, plan: Plan, *, snapshot_backlog: bool) -> dict[str, Any]:
    with LocalBroker(folder / "broker-latency") as broker, FaultProxy(broker.port) as proxy:
        proxy.set_mode("throttle", rate=THROTTLE)
        sub = Recorder(broker.port)
        with node(folder, proxy.port) as n:
            n.link.wait_connected(10)
            if snapshot_backlog:
                for _ in range(plan.snapshots):
                    n.snapshot(plan.snapshot_bytes)
            sent = set()
            for _ in range(plan.latency_events):
                sent.add(n.event())
                time.sleep(plan.latency_interval_s)
            budget = 10 + plan.snapshots * plan.snapshot_bytes / THROTTLE * 2
            sub.wait(lambda: sent <= {e["id"] for _, e in sub.events()}, budget)
        sub.close()
    first: dict[str, float] = {}
    for t, e in sub.events():
        first.setdefault(e["id"], t - e["t"])
    lat = [first[i] for i in sorted(sent) if i in first]
    return {
        "events": len(sent), "delivered": len(lat),
        "snapshots_before": plan.snapshots if snapshot_backlog else 0,
        "snapshot_bytes": plan.snapshot_bytes, "throttle_bytes_per_s": THROTTLE,
        "latency_ms_p50": _pct(lat, 50), "latency_ms_p95": _pct(lat, 95),
    }  # fmt: skip


def link_stats(workdir: Path, plan: Plan) -> dict[str, Any]:
    logging.getLogger("agent").setLevel(logging.ERROR)  # the faults are on purpose here
    with tempfile.TemporaryDirectory(prefix="link-", dir=workdir) as tmp:
        folder = Path(tmp)
        r: dict[str, Any] = {"status": "measured"}
        r["flap"] = flap(folder, plan)
        r["backlog"] = backlog(folder, plan)
        r["latency_events_only"] = latency(folder, plan, snapshot_backlog=False)
        r["latency_with_snapshot_backlog"] = latency(folder, plan, snapshot_backlog=True)
    alone, busy = r["latency_events_only"], r["latency_with_snapshot_backlog"]
    if alone["latency_ms_p50"] and busy["latency_ms_p50"]:
        r["latency_p50_backlog_vs_alone"] = round(
            busy["latency_ms_p50"] / alone["latency_ms_p50"], 2
        )
    return r


def rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows for bench/report.py."""
    if r.get("status") != "measured":
        return [("link", f"skipped: {r.get('reason')}")]
    f, b = r["flap"], r["backlog"]
    a, s = r["latency_events_only"], r["latency_with_snapshot_backlog"]
    back = f"{b['events']} events in {b['seconds_after_connack']} s after CONNACK"
    return [
        ("link flap: duplicate factor", f"{f['duplicate_factor']} ({f['received']} received / "
         f"{f['unique']} unique, {f['lost']} lost, {f['down_phases']} resets of the link)"),
        ("link backlog after broker back", f"{back} ({b['events_per_s']} events/s)"),
        ("event latency 32 KiB/s, alone",
         f"p50 {a['latency_ms_p50']} ms, p95 {a['latency_ms_p95']} ms"),
        (f"  behind {s['snapshots_before']} x {s['snapshot_bytes'] // 1000} kB snapshots",
         f"p50 {s['latency_ms_p50']} ms, p95 {s['latency_ms_p95']} ms "
         f"(x{r.get('latency_p50_backlog_vs_alone')} p50)"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.link", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    r = link_stats(args.out, QUICK if args.quick else Plan())
    (args.out / "link.json").write_text(json.dumps(r, indent=2) + "\n")
    for k, v in rows(r):
        print(f"{k:<40} | {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
