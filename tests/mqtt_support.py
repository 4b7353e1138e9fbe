"""A real Mosquitto per test and a recording paho subscriber: never a mock of the broker.

The ``broker`` fixture reaches every test module through ``pytest_plugins`` in
tests/conftest.py; a module may also import it explicitly::

    from tests.mqtt_support import broker_fixture  # noqa: F401

(named ``broker_fixture`` so that test arguments called ``broker`` do not trip ruff's F811).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
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

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """``/usr/sbin/mosquitto`` on 127.0.0.1 and a free port that survives :meth:`restart`.

    ``persistent`` saves sessions and subscriptions after every change, so a subscriber's
    persistent session survives a restart (even a SIGKILL); ``acl`` is the text of an ACL file;
    ``anonymous=False`` refuses every client (there are no users).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        persistent: bool = False,
        acl: str | None = None,
        anonymous: bool = True,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.persistent = persistent
        self.acl = acl
        self.anonymous = anonymous
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_conf(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # keep root: pytest's tmp dirs are private to it
        if self.persistent:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 5.0) -> None:
        conf = self._write_conf()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 3 s); works on a frozen broker too."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self._signal(signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()


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
    """A real paho client recording what it receives on ``topic_filter`` (QoS 1).

    ``persistent`` keeps a broker-side session (clean_start False, 1 h expiry), so messages
    published while it is away (broker restart) are delivered when it comes back.
    """

    def __init__(self, port: int, topic_filter: str, *, persistent: bool = False) -> None:
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

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
