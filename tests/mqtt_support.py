"""A real Mosquitto per test and a recording paho subscriber: never a mock of the broker.

The ``broker`` fixture reaches every test module through ``pytest_plugins`` in
tests/conftest.py; a module may also import it explicitly::

    from tests.mqtt_support import broker_fixture  # noqa: F401

(named ``broker_fixture`` so that test arguments called ``broker`` do not trip ruff's F811).
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.delivery.mqtt_link import MqttLink
from agent.delivery.outbox import Outbox, OutMessage
from agent.delivery.publisher import Publisher
from agent.tools.localbroker import LocalBroker


@dataclass(frozen=True)
class BrokerTls:
    """TLS on the broker's listener: its certificate, the CA it trusts for client
    certificates, and whether a client must present one (whose CN then is its user name)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False
    use_identity_as_username: bool = False

    def lines(self) -> list[str]:
        return [
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {str(self.require_certificate).lower()}",
            f"use_identity_as_username {str(self.use_identity_as_username).lower()}",
        ]


class Mosquitto(LocalBroker):
    """The agent's :class:`LocalBroker` with the options tests need.

    ``persistent`` saves sessions and subscriptions after every change, so a subscriber's
    persistent session survives a restart (even a SIGKILL); ``acl`` is the text of an ACL file;
    ``anonymous=False`` refuses every client (there are no users); ``tls`` puts the listener
    behind TLS; ``users`` (name -> password) become a ``password_file``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        persistent: bool = False,
        acl: str | None = None,
        anonymous: bool = True,
        tls: BrokerTls | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        lines: list[str] = [] if tls is None else tls.lines()  # they belong to the listener
        if persistent:
            lines += [
                "persistence true",
                f"persistence_location {workdir}/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        if acl is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "acl").write_text(acl)
            (workdir / "acl").chmod(0o644)
            lines.append(f"acl_file {workdir / 'acl'}")
        if users:
            workdir.mkdir(parents=True, exist_ok=True)
            passwd = workdir / "passwd"
            for name, password in users.items():
                create = [] if passwd.exists() else ["-c"]
                subprocess.run(["mosquitto_passwd", "-b", *create, str(passwd), name, password],
                               check=True, capture_output=True)  # fmt: skip
            lines.append(f"password_file {passwd}")
        super().__init__(workdir, conf_lines=tuple(lines), anonymous=anonymous)

    def saved_at(self) -> int:
        """When the broker last wrote its persistence file (ns; 0 before the first save)."""
        db = self.workdir / "mosquitto.db"
        return db.stat().st_mtime_ns if db.exists() else 0

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)


@pytest.fixture(name="broker")
def broker_fixture(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh broker per test, always stopped (by pid) afterwards."""
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: dict[str, str]


class Subscriber:
    """A real paho client recording what it receives on ``topic_filter`` (QoS 1), over
    ``tls`` and with ``auth`` (user name, password) when given.

    ``persistent`` keeps a broker-side session (clean_start False, 1 h expiry), so messages
    published while it is away (broker restart) are delivered when it comes back.
    """

    def __init__(
        self,
        port: int,
        topic_filter: str,
        *,
        persistent: bool = False,
        tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self._filter = topic_filter
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 1)
        if tls is not None:
            self._client.tls_set_context(tls)
        if auth is not None:
            self._client.username_pw_set(*auth)
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self._client.connect("127.0.0.1", port, 5, clean_start=not persistent, properties=props)
        self._client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("subscriber did not get its SUBACK")

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(self._filter, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = dict(getattr(msg.properties, "UserProperty", []) or [])
        with self._cond:
            self._messages.append(Received(msg.topic, msg.payload, bool(msg.retain), props))
            self._cond.notify_all()

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._messages), timeout)

    def sync(self, timeout: float = 5.0) -> bool:
        """A SUBSCRIBE round trip: once its SUBACK is back, the broker has processed every
        PUBACK this client sent before it (one connection is handled in order)."""
        self._subscribed.clear()
        self._client.subscribe(f"{self._filter.rstrip('#/')}/sync-{uuid.uuid4().hex[:8]}", qos=1)
        return self._subscribed.wait(timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class DeliveryAgent:
    """The agent's delivery path (outbox -> publisher -> link) under test; ``base`` is its
    topic tree, ``offline`` its clean-shutdown status."""

    outbox: Outbox
    link: MqttLink
    publisher: Publisher
    base: str
    offline: bytes

    def put(self, i: int, size: int = 0, topic: str | None = None) -> str:
        """Commit event ``m{i:04d}`` (padded by ``size`` bytes); its message id."""
        msg_id = f"m{i:04d}"
        body = json.dumps({"id": msg_id, "pad": "x" * size}).encode()
        topic = topic or f"{self.base}/events"
        self.outbox.put([OutMessage("event", topic, body, 1, msg_id, f"ev{i}")])
        return msg_id

    def stop(self) -> None:
        """Stop it and wait for the link thread to end, so nothing of it logs after the test
        (a connection attempt in progress ends within the link's connect budget)."""
        self.publisher.stop()
        assert self.link.stop(self.offline, timeout=60), "the mqtt link thread did not end"
        self.outbox.close()
