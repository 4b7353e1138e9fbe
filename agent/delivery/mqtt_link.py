"""The MQTT link: one paho client (MQTT v5, clean start) driven by ONE thread of our own.

The link thread is the only thread that touches the socket: it calls ``client.loop(0.2)``
while connected and reconnects with capped, jittered exponential backoff when not. Other
threads call :meth:`MqttLink.publish`, which only queues the packet in paho and wakes the
link thread (``on_socket_register_write`` is set, so paho never writes from the caller's
thread). paho callbacks only record into queues and set events: ``on_publish`` runs under
paho's ``_out_message_mutex``, so it must not take a lock that is held around ``publish()``.

Messages are never left to paho's in-memory queue: ``publish`` returns None while
disconnected, and on every connection loss the link thread drops whatever paho still holds
(``drop_out_messages``) under the same lock ``publish`` takes, so paho cannot re-send its own
copies after reconnecting while the publisher re-sends the same rows from the outbox.

Status: ``{base}/status`` gets the will (retained, QoS 1) and, after every CONNACK, the
``online_payload()`` (retained, QoS 1) published from the link thread.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig, read_secret
from agent.delivery.tls import build_context, describe_ssl_text, describe_tls_error
from agent.errors import LinkError
from agent.node.liveness import NULL_BEAT, Beat

log = logging.getLogger(__name__)
_paho_log = log.getChild("paho")

_LOOP_S = 0.2
_CONNACK_TIMEOUT_S = 10.0
# one connection attempt may block this long: DNS (glibc: 2 tries x 3 servers x 5 s), TCP and
# TLS (paho's 5 s each), then the CONNACK wait; declared to the liveness watch
_CONNECT_BUDGET_S = 30.0 + 2 * 5.0 + _CONNACK_TIMEOUT_S
_OFFLINE_ACK_TIMEOUT_S = 2.0
_OWN_QUOTA = 2  # status messages of our own that may be in flight next to the publisher's
_SOCKET_ERRORS = ("failed to receive on socket", "failed to send on socket")  # paho's log texts


class PubAck(NamedTuple):
    """One PUBACK (or QoS 0 write) result: ``ok`` is False for a v5 failure reason code."""

    mid: int
    ok: bool
    reason: str
    code: int = 0


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """Counters for the heartbeat."""

    connected: bool
    connects: int
    disconnects: int
    refused: int
    last_error: str | None
    published: int
    acked: int
    failed: int


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Capped exponential backoff with jitter: uniform in [cap/2, cap], cap = lo * 2**attempt."""
    cap = min(hi, lo * 2.0 ** min(attempt, 32))
    return rng.uniform(max(lo, cap / 2), max(lo, cap))


class MqttLink:
    """A reconnecting MQTT v5 connection owned by its own thread; see the module docstring."""

    def __init__(
        self,
        cfg: MqttConfig,
        base_topic: str,
        client_id: str,
        will_payload: bytes,
        online_payload: Callable[[], bytes],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._status_topic = f"{base_topic}/status"
        self._online_payload = online_payload
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._stop = threading.Event()
        self._offline: bytes | None = None
        self._thread: threading.Thread | None = None
        self._wakers: list[threading.Event] = []
        self.progress: Beat = NULL_BEAT  # ticked by the link thread (agent.node.liveness)
        # set by the link thread; read anywhere
        self._connected = threading.Event()
        self._recv_max = 65535
        self._connects = self._disconnects = self._refused = self._acked = self._failed = 0
        self._last_error: str | None = None
        # written by paho callbacks (link thread), drained by other threads
        self._acks: queue.SimpleQueue[PubAck] = queue.SimpleQueue()
        self._connack: queue.SimpleQueue[tuple[ReasonCode, int]] = queue.SimpleQueue()
        self._lost = threading.Event()
        self._own_mids: dict[int, bool] = {}  # link thread only: mid -> acked
        # _pub_lock is held around client.publish and the drop on loss, never in callbacks
        self._pub_lock = threading.Lock()
        self._flag_lock = threading.Lock()  # leaf lock for the counters below
        self._published = 0
        self._was_lost = False
        self._reasons_logged: set[str] = set()  # why connecting failed, logged once each
        self._socket_error: str | None = None  # paho's last socket error (link thread)
        self._client = self._make_client(client_id, will_payload)

    def _make_client(self, client_id: str, will_payload: bytes) -> mqtt.Client:
        cfg = self._cfg
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        client.on_log = self._on_log
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_register_write = _ignore_socket  # only the link thread writes
        client.max_inflight_messages_set(0)  # the publisher bounds in-flight rows itself
        client.will_set(self._status_topic, will_payload, qos=1, retain=True)
        if cfg.username is not None:
            password = read_secret(cfg.password, cfg.password_file, "mqtt.password_file")
            client.username_pw_set(cfg.username, password)
        if cfg.tls.enabled:  # bad TLS material: ConfigError naming the field
            client.tls_set_context(build_context(cfg.tls, "mqtt.tls"))
        return client

    # -- public API ---------------------------------------------------------------------------

    def add_waker(self, event: threading.Event) -> None:
        """Set ``event`` on every PUBACK, connect and connection loss (call before start)."""
        self._wakers.append(event)

    def start(self) -> None:
        """Start the link thread; it connects in the background."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
            self._thread.start()

    def stop(self, graceful_offline: bytes | None = None, timeout: float = 5.0) -> bool:
        """Stop the link thread; whether it ended within ``timeout`` (it may be inside a
        connection attempt, which ends on its own within the connect budget).

        With ``graceful_offline``, publish it retained on the status topic, wait briefly for
        its PUBACK and DISCONNECT normally; without, DISCONNECT with reason 4 so the broker
        publishes the will.
        """
        self._offline = graceful_offline
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def inflight_limit(self) -> int:
        """Unacked messages the publisher may have out: config bounded by the broker's quota."""
        return max(1, min(self._cfg.max_inflight, self._recv_max - _OWN_QUOTA))

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: dict[str, str] | None = None,
    ) -> int | None:
        """Hand one message to the connection; its mid, or None when not connected.

        Nothing is queued while disconnected: the caller keeps the message and re-sends it.
        ``properties`` become MQTT v5 user properties. Raises :class:`LinkError` for a message
        paho will never send (invalid topic, payload over 256 MB).
        """
        props = None
        if properties:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = list(properties.items())
        with self._pub_lock:
            if not self._connected.is_set():
                return None
            try:
                info = self._client.publish(topic, payload, qos, retain, props)
            except ValueError as exc:
                raise LinkError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None  # the connection just dropped; the link thread discards the copy
        with self._flag_lock:
            self._published += 1
        return info.mid

    def acks(self) -> list[PubAck]:
        """The publish results that arrived since the last call (one consumer: the publisher)."""
        out: list[PubAck] = []
        while True:
            try:
                out.append(self._acks.get_nowait())
            except queue.Empty:
                return out

    def take_disconnected(self) -> bool:
        """True once after each connection loss: mids handed out before it will never ack."""
        with self._flag_lock:
            was, self._was_lost = self._was_lost, False
        return was

    @property
    def disconnects(self) -> int:
        return self._disconnects

    def status(self) -> LinkStatus:
        return LinkStatus(
            connected=self.connected,
            connects=self._connects,
            disconnects=self._disconnects,
            refused=self._refused,
            last_error=self._last_error,
            published=self._published,
            acked=self._acked,
            failed=self._failed,
        )

    # -- paho callbacks: record and signal only ------------------------------------------------

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        recv_max = getattr(props, "ReceiveMaximum", 65535) if props is not None else 65535
        self._connack.put((reason, int(recv_max)))

    def _on_log(self, _c: mqtt.Client, _u: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and buf.startswith(_SOCKET_ERRORS):
            self._socket_error = describe_ssl_text(buf.split(": ", 1)[-1])  # e.g. a TLS alert
        if _paho_log.isEnabledFor(logging.DEBUG):  # paho's ERRORs repeat our own warnings
            _paho_log.debug("%s", buf)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        self._lost.set()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            self._failed += 1
        else:
            self._acked += 1
        if mid in self._own_mids:
            self._own_mids[mid] = True
            return
        self._acks.put(PubAck(mid, not reason.is_failure, str(reason), int(reason.value)))
        self._wake()

    # -- the link thread -----------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self.progress.tick(_LOOP_S if self._connected.is_set() else _CONNECT_BUDGET_S)
            try:
                if self._connected.is_set():
                    self._service()
                elif self._try_connect():
                    attempt = 0
                else:
                    delay = backoff_delay(
                        attempt, self._cfg.reconnect_min_s, self._cfg.reconnect_max_s, self._rng
                    )
                    attempt += 1
                    self.progress.tick(delay)
                    self._stop.wait(delay)
            except Exception as exc:  # thread top: log, count, back off, go on
                log.exception("mqtt link thread error")
                self._last_error = f"link thread error: {exc!r}"
                self._lose(MQTTErrorCode.MQTT_ERR_UNKNOWN)
                self.progress.tick(self._cfg.reconnect_min_s)
                self._stop.wait(self._cfg.reconnect_min_s)
        try:
            self._shutdown()
        except Exception:  # thread top
            log.exception("mqtt link shutdown failed")

    def _service(self) -> None:
        rc = self._client.loop(_LOOP_S)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._lost.is_set():
            self._lose(rc)

    def _try_connect(self) -> bool:
        """One connection attempt up to CONNACK; True when connected and online."""
        host, port = self._cfg.host, self._cfg.port
        self._lost.clear()
        while not self._connack.empty():
            self._connack.get_nowait()
        self._socket_error = None
        try:
            self._client.connect(host, port, self._cfg.keepalive_s, clean_start=True)
        except ssl.SSLError as exc:  # expired or untrusted certificate, name mismatch, ...
            why = describe_tls_error(exc)
            return self._failed_attempt(f"TLS handshake with {host}:{port} failed: {why}")
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS
            return self._failed_attempt(f"cannot connect to {host}:{port}: {exc}")
        _no_delay(self._client.socket())
        deadline = time.monotonic() + _CONNACK_TIMEOUT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            rc = self._client.loop(_LOOP_S)
            if not self._connack.empty():
                reason, recv_max = self._connack.get_nowait()
                if reason.is_failure:
                    return self._refusal(reason)
                self._up(recv_max)
                return True
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return self._failed_attempt(self._closed_before_connack())
        return self._failed_attempt(f"no CONNACK from {host}:{port}")

    def _closed_before_connack(self) -> str:
        host, port, why = self._cfg.host, self._cfg.port, self._socket_error
        if why is not None and " alert " in f" {why} ":  # the broker refused our certificate
            return f"TLS handshake with {host}:{port} failed: the broker sent {why}"
        return f"{host}:{port} closed the connection before CONNACK: {why or 'no reason given'}"

    def _up(self, recv_max: int) -> None:
        payload = self._online_payload()
        self._recv_max = recv_max
        self._own_mids.clear()
        with self._pub_lock:
            info = self._client.publish(self._status_topic, payload, qos=1, retain=True)
            self._own_mids[info.mid] = False
            self._connected.set()
        self._connects += 1
        self._reasons_logged.clear()
        log.info("mqtt connected to %s:%d", self._cfg.host, self._cfg.port)
        self._wake()

    def _lose(self, rc: MQTTErrorCode) -> None:
        """Forget the connection: nothing paho still holds may be re-sent after reconnecting."""
        with self._pub_lock:
            was_up = self._connected.is_set()
            self._connected.clear()
            dropped = self._client.drop_out_messages()
        self._lost.clear()
        if not was_up:
            return
        with self._flag_lock:
            self._was_lost = True
        self._disconnects += 1
        why = self._socket_error or mqtt.error_string(rc)
        self._last_error = f"connection lost: {why}"
        log.warning(
            "mqtt connection to %s:%d lost (%s); %d unacked messages left to the outbox",
            self._cfg.host,
            self._cfg.port,
            why,
            len(dropped),
        )
        self._wake()

    def _failed_attempt(self, why: str) -> bool:
        """Record why; logged once per distinct reason until the next successful connect."""
        if why not in self._reasons_logged:
            self._reasons_logged.add(why)
            log.warning("mqtt %s; retrying with backoff", why)
        self._last_error = why
        return False

    def _refusal(self, reason: ReasonCode) -> bool:
        self._refused += 1
        why = f"broker refused the connection: {reason} (reason code {reason.value})"
        if why not in self._reasons_logged:
            self._reasons_logged.add(why)
            log.error("mqtt %s:%d: %s; retrying with backoff", self._cfg.host, self._cfg.port, why)
        self._last_error = why
        return False

    def _shutdown(self) -> None:
        """Offline status (if asked and connected), then DISCONNECT and flush it."""
        if self._offline is not None and self._connected.is_set():
            with self._pub_lock:
                self._connected.clear()
                info = self._client.publish(self._status_topic, self._offline, qos=1, retain=True)
                self._own_mids[info.mid] = False
            deadline = time.monotonic() + _OFFLINE_ACK_TIMEOUT_S
            while not self._own_mids.get(info.mid) and time.monotonic() < deadline:
                if self._client.loop(0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        with self._pub_lock:
            self._connected.clear()
        # reason 4 asks the broker to publish the will when we did not say offline ourselves
        will = ReasonCode(PacketTypes.DISCONNECT, identifier=4)
        rc = self._client.disconnect(None if self._offline is not None else will)
        deadline = time.monotonic() + 1.0
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and time.monotonic() < deadline:
            if self._client.socket() is None:  # paho closes it once DISCONNECT is written
                break
            self._client.loop(0.05)
        log.info("mqtt link stopped")

    def _wake(self) -> None:
        for event in self._wakers:
            event.set()


def _no_delay(sock: Any) -> None:
    """Send small packets at once: paho leaves Nagle on, which holds a PUBLISH for up to ~40 ms
    waiting for the previous one's ACK (see FIELD-NOTES)."""
    try:
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a unix socket, a websocket wrapper): nothing to tune


def _ignore_socket(_client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
    """Registered so that ``publish()`` only queues; the link thread's loop() does the write."""
