"""Outbox -> MqttLink -> real Mosquitto -> real subscriber: order, PUBACK, restarts, will."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttConfig, OutboxConfig, TlsConfig
from agent.contract import Topics
from agent.delivery.mqtt_link import MqttLink, backoff_delay
from agent.delivery.outbox import Outbox, OutMessage
from agent.delivery.publisher import Publisher
from agent.errors import ConfigError
from tests.mqtt_support import DeliveryAgent, Mosquitto, Received, Subscriber  # `broker`: conftest
from tests.polling import wait_until

REPO = Path(__file__).resolve().parents[1]
BASE = "camnet/c1/n1"
TOPICS = Topics("camnet", "c1", "n1")
OFFLINE = b'{"state":"offline"}'


def online() -> bytes:
    return json.dumps({"state": "online", "ts": time.time()}).encode()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., DeliveryAgent]]:
    made: list[DeliveryAgent] = []

    def make(port: int, **mqtt: Any) -> DeliveryAgent:
        cfg = MqttConfig(port=port, reconnect_min_s=0.05, reconnect_max_s=0.3, **mqtt)
        outbox = Outbox.open(OutboxConfig(path=tmp_path / f"outbox{len(made)}.db"))
        link = MqttLink(cfg, BASE, f"edge-n{len(made)}", OFFLINE, online)
        agent = DeliveryAgent(outbox, link, Publisher(outbox, link, cfg, TOPICS), BASE, OFFLINE)
        link.start()
        agent.publisher.start()
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()


def ids_of(messages: list[Received]) -> list[str]:
    return [json.loads(m.payload)["id"] for m in messages if m.topic == f"{BASE}/events"]


def test_rows_go_in_order_and_leave_only_after_puback(
    broker: Mosquitto, agents: Callable[..., DeliveryAgent]
) -> None:
    sub = Subscriber(broker.port, f"{BASE}/#")
    agent = agents(broker.port)
    assert agent.link.wait_connected(5)
    sent = [agent.put(i) for i in range(30)]
    jpeg = os.urandom(5000)
    seq = agent.outbox.put(
        [
            OutMessage("event", f"{BASE}/events", b'{"id":"m-snap"}', 1, "m-snap", "ev-s"),
            OutMessage("snapshot", f"{BASE}/snapshots/ev-s", jpeg, 1, "m-snap.jpg", "ev-s"),
        ]
    )
    assert agent.publisher.drain(5)
    assert sub.wait_for(lambda m: len(ids_of(m)) >= 31, 5)
    assert ids_of(sub.messages) == [*sent, "m-snap"]
    snap = [m for m in sub.messages if "/snapshots/" in m.topic]
    assert snap[0].payload == jpeg
    assert snap[0].properties == {"id": "m-snap.jpg", "seq": str(seq)}

    broker.freeze()  # no PUBACK while frozen: the rows must stay
    held = [agent.put(i) for i in range(100, 105)]
    assert wait_until(lambda: agent.publisher.stats().inflight == 5, 2)
    time.sleep(0.5)
    assert agent.outbox.stats().depth == 5
    broker.thaw()
    assert agent.publisher.drain(5)
    assert sub.wait_for(lambda m: ids_of(m)[-5:] == held, 5)
    assert agent.link.status().disconnects == 0
    sub.close()


def test_broker_killed_and_restarted_delivers_everything_once(
    tmp_path: Path, agents: Callable[..., DeliveryAgent]
) -> None:
    b = Mosquitto(tmp_path / "pbroker", persistent=True)
    b.start()
    sub = Subscriber(b.port, f"{BASE}/events", persistent=True)
    try:
        agent = agents(b.port)
        assert agent.link.wait_connected(5)
        sent = [agent.put(i) for i in range(5)]
        assert agent.publisher.drain(5)
        # the subscriber's acks for those 5 reach the broker's disk before it dies: a restart
        # must not hand them to the subscriber again (that would be the broker's duplicate)
        assert sub.wait_for(lambda m: set(sent) <= set(ids_of(m)), 5)
        saved = b.saved_at()
        assert sub.sync()
        assert wait_until(lambda: b.saved_at() != saved, 5)
        b.freeze()  # the next 10 are handed to paho and written, but never processed
        sent += [agent.put(i) for i in range(5, 15)]
        assert wait_until(lambda: agent.publisher.stats().inflight == 10, 2)
        b.kill()  # ... and die with the broker
        assert wait_until(lambda: not agent.link.connected, 5)
        sent += [agent.put(i) for i in range(15, 50)]  # while the broker is down
        time.sleep(0.3)
        assert agent.outbox.stats().depth == 45
        b.start()  # same port
        assert agent.publisher.drain(10)
        assert sub.wait_for(lambda m: set(sent) <= set(ids_of(m)), 10)
        got = ids_of(sub.messages)
        first_seen = list(dict.fromkeys(got))
        duplicates = len(got) - len(first_seen)
        print(f"duplicates={duplicates} resends={agent.publisher.stats().resends}")
        assert first_seen == sent
        assert duplicates == 0  # paho's own copies were dropped: only the outbox re-sent
        assert agent.publisher.stats().resends == 10
        assert agent.link.status().disconnects == 1
    finally:
        sub.close()
        b.stop()


def test_status_online_retained_and_will_offline_after_sigkill(broker: Mosquitto) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.link_child", str(broker.port), BASE],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    subs: list[Subscriber] = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "connected"
        subs.append(Subscriber(broker.port, f"{BASE}/status"))
        # "online" may come live (published just after the CONNACK) or retained
        assert subs[0].wait_for(lambda m: any(b'"online"' in x.payload for x in m), 5)
        late = Subscriber(broker.port, f"{BASE}/status")
        assert late.wait_for(bool, 5)
        late.close()
        assert late.messages[0].retain
        assert json.loads(late.messages[0].payload)["state"] == "online"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        assert subs[0].wait_for(lambda m: m[-1].payload == OFFLINE, 5)  # the will, live
        subs.append(Subscriber(broker.port, f"{BASE}/status"))
        assert subs[1].wait_for(bool, 5)
        assert subs[1].messages[0].payload == OFFLINE
        assert subs[1].messages[0].retain
    finally:
        if child.poll() is None:
            child.kill()
        for s in subs:
            s.close()


def test_graceful_stop_leaves_offline_retained(
    broker: Mosquitto, agents: Callable[..., DeliveryAgent]
) -> None:
    agent = agents(broker.port)
    assert agent.link.wait_connected(5)
    agent.link.stop(OFFLINE)
    assert not agent.link.connected
    sub = Subscriber(broker.port, f"{BASE}/status")
    assert sub.wait_for(bool, 5)
    assert sub.messages[0].payload == OFFLINE
    assert sub.messages[0].retain
    sub.close()


def test_oversized_and_refused_messages_are_dead_lettered(
    tmp_path: Path, agents: Callable[..., DeliveryAgent]
) -> None:
    b = Mosquitto(tmp_path / "acl", acl=f"topic readwrite {BASE}/#\n")
    b.start()
    sub = Subscriber(b.port, f"{BASE}/#")
    try:
        agent = agents(b.port, max_payload_bytes=2048)
        assert agent.link.wait_connected(5)
        first = agent.put(0)
        agent.put(1, size=5000)  # over max_payload_bytes: never sent
        agent.put(2, topic="camnet/c1/other-node/events")  # ACL: v5 PUBACK "Not authorized"
        last = agent.put(3)
        assert agent.publisher.drain(5)
        assert sub.wait_for(lambda m: ids_of(m) == [first, last], 5)
        assert agent.outbox.stats().dead_letters == 2
        assert agent.publisher.stats().dead_letters == 2
        assert agent.link.status().disconnects == 0
    finally:
        sub.close()
        b.stop()


def test_heartbeats_are_not_queued_while_disconnected(
    tmp_path: Path, agents: Callable[..., DeliveryAgent]
) -> None:
    b = Mosquitto(tmp_path / "late")  # not started yet: the agent cannot connect
    agent = agents(b.port)
    time.sleep(0.2)
    assert agent.link.publish(f"{BASE}/heartbeat", b"hb-1", 0) is None
    assert agent.link.publish(f"{BASE}/heartbeat", b"hb-2", 1) is None
    queued = agent.put(0)
    assert not agent.publisher.drain(0.2)  # the event waits in the outbox
    b.start()
    try:
        sub = Subscriber(b.port, f"{BASE}/#")
        assert agent.link.wait_connected(5)
        assert agent.publisher.drain(5)
        assert agent.link.publish(f"{BASE}/heartbeat", b"hb-3", 1) is not None
        assert sub.wait_for(lambda m: any(x.payload == b"hb-3" for x in m), 5)
        assert sub.wait_for(lambda m: ids_of(m) == [queued], 5)  # queued offline, sent once
        time.sleep(0.2)
        beats = [m.payload for m in sub.messages if m.topic.endswith("/heartbeat")]
        assert beats == [b"hb-3"]
        sub.close()
        late = Subscriber(b.port, f"{BASE}/events", persistent=False)
        assert not late.wait_for(bool, 0.2)  # events are not retained
        late.close()
        assert agent.outbox.stats().depth == 0
    finally:
        b.stop()


def test_refused_connection_is_logged_once_and_retried_with_backoff(
    tmp_path: Path, agents: Callable[..., DeliveryAgent], caplog: pytest.LogCaptureFixture
) -> None:
    b = Mosquitto(tmp_path / "closed", anonymous=False)
    b.start()
    try:
        with caplog.at_level(logging.WARNING, logger="agent.delivery.mqtt_link"):
            agent = agents(b.port)
            agent.put(0)
            assert wait_until(lambda: agent.link.status().refused >= 3, 5)
        status = agent.link.status()
        assert not status.connected
        assert "Not authorized" in (status.last_error or "")
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1
        assert agent.outbox.stats().depth == 1
    finally:
        b.stop()


def test_bad_tls_material_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    tls = TlsConfig(enabled=True, ca_file=tmp_path / "missing-ca.pem")
    with pytest.raises(ConfigError) as err:
        MqttLink(MqttConfig(tls=tls), BASE, "edge-x", OFFLINE, online)
    assert err.value.problems[0][0] == "mqtt.tls.ca_file"


def test_backoff_grows_jittered_and_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 60.0, rng) for n in range(12)]
    assert 1.0 <= delays[0] <= 1.0
    assert all(2**n / 2 <= d <= 2**n for n, d in enumerate(delays[1:6], 1))
    assert all(30.0 <= d <= 60.0 for d in delays[6:])
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jittered, not in lockstep
