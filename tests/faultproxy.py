"""A TCP proxy of our own between the agent and the broker, for injecting link faults.

``tc netem`` is not available on the test machines and toxiproxy is not packaged, so the
faults are made here, with real sockets on 127.0.0.1 only::

    with FaultProxy(broker.port) as proxy:      # listens on proxy.port
        proxy.set_mode("blackhole")             # read and discard, answer nothing
        proxy.set_mode("reset")                 # RST every connection (SO_LINGER 0), old and new
        proxy.set_mode("refuse")                # nothing listens: connect() is refused
        proxy.set_mode("throttle", rate=32 * 1024)  # bytes per second, each direction
        proxy.set_mode("pass")
        proxy.flap(up_s=3, down_s=2, duration_s=60)  # in the background, bounded

Modes:

``pass``
    Forward both ways.
``throttle``
    Forward both ways through one token bucket per direction (shared by all connections, like
    one slow uplink): ``rate`` bytes per second.
``blackhole``
    Accept and keep reading, forward nothing, send nothing: the client's writes succeed and it
    can only find the dead link by its keepalive. A connection that lost bytes this way stays
    black-holed until the client closes it (its byte stream can never be whole again), as on a
    real link where the packets were lost.
``reset``
    Every open connection is closed with an RST; new connections are accepted and reset at once.
``refuse``
    The listening socket is closed, so new connections are refused; open ones are left alone.

Every loop is bounded: sockets are polled with short timeouts and the proxy stops itself after
``max_lifetime_s``. :meth:`stats` counts connections, resets and the bytes forwarded and
discarded in each direction.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Literal

Mode = Literal["pass", "throttle", "blackhole", "reset", "refuse"]
MODES: tuple[Mode, ...] = ("pass", "throttle", "blackhole", "reset", "refuse")
_POLL_S = 0.05
_CHUNK = 16 * 1024


@dataclass(frozen=True, slots=True)
class ProxyStats:
    mode: str
    connections: int  # accepted and connected upstream
    open_connections: int
    resets: int  # connections closed with an RST by the proxy
    refused_phases: int  # times the listener was closed for "refuse"
    bytes_up: int  # client -> upstream, forwarded
    bytes_down: int  # upstream -> client, forwarded
    bytes_discarded: int  # read and thrown away while black-holed
    flaps: int  # completed down phases of flap()


class _Bucket:
    """A token bucket: ``take(n)`` returns how many of ``n`` bytes may pass now (>= 0)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rate = 0.0
        self._tokens = 0.0
        self._at = time.monotonic()

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self.rate = rate
            self._tokens = min(self._tokens, rate / 10)
            self._at = time.monotonic()

    def take(self, n: int) -> int:
        with self._lock:
            now = time.monotonic()
            # at most 100 ms of burst, so short reads follow the rate closely
            self._tokens = min(self.rate / 10, self._tokens + (now - self._at) * self.rate)
            self._at = now
            got = int(min(n, self._tokens))
            self._tokens -= got
            return got


def _rst(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.poisoned = upstream is None  # lost bytes: black-holed for good
        self.closed = threading.Event()

    def close(self, rst: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if rst:
                _rst(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


class FaultProxy:
    """See the module docstring. Start with :meth:`start` or as a context manager."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        port: int = 0,
        max_lifetime_s: float = 600.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.max_lifetime_s = max_lifetime_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._mode: Mode = "pass"
        self._conns: list[_Conn] = []
        self._threads: list[threading.Thread] = []
        self._up = _Bucket()
        self._down = _Bucket()
        self._n = {
            "connections": 0, "resets": 0, "refused_phases": 0, "bytes_up": 0, "bytes_down": 0,
            "bytes_discarded": 0, "flaps": 0,
        }  # fmt: skip
        self._listener: socket.socket | None = None
        self.port = port
        self._bind()
        self._flapper: threading.Thread | None = None
        self._started = time.monotonic()

    # -- control ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._spawn(self._accept_loop, "proxy-accept")
        self._spawn(self._watchdog, "proxy-watchdog")
        return self

    def stop(self) -> None:
        """Stop accepting, close every connection (FIN), join the threads."""
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        for conn in conns:
            conn.close(rst=False)
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode, *, rate: float | None = None) -> None:
        """Switch mode now; ``rate`` (bytes/s, each direction) is required for ``throttle``."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; expected one of {MODES}")
        if mode == "throttle":
            if rate is None or rate <= 0:
                raise ValueError("throttle needs rate > 0 (bytes per second)")
            self._up.set_rate(rate)
            self._down.set_rate(rate)
        with self._lock:
            previous, self._mode = self._mode, mode
            conns = list(self._conns)
        if mode == "blackhole":
            for conn in conns:
                conn.poisoned = True
        if mode == "reset":
            for conn in conns:
                self._reset(conn)
        if mode == "refuse" and previous != "refuse":
            self._unbind()
        if mode != "refuse" and previous == "refuse":
            self._bind()

    def flap(
        self, up_s: float, down_s: float, duration_s: float, down_mode: Mode = "reset"
    ) -> threading.Thread:
        """In the background for ``duration_s``: ``pass`` for ``up_s``, ``down_mode`` for
        ``down_s``, repeated; ends in ``pass``. Returns the thread (join it to wait)."""
        if down_mode not in ("reset", "refuse", "blackhole"):
            raise ValueError("down_mode must be reset, refuse or blackhole")

        def run() -> None:
            end = time.monotonic() + duration_s
            while not self._stop.is_set() and time.monotonic() < end:
                self.set_mode("pass")
                if self._stop.wait(min(up_s, max(0.0, end - time.monotonic()))):
                    break
                if time.monotonic() >= end:
                    break
                self.set_mode(down_mode)
                self._stop.wait(min(down_s, max(0.0, end - time.monotonic())))
                with self._lock:
                    self._n["flaps"] += 1
            if not self._stop.is_set():
                self.set_mode("pass")

        self._flapper = self._spawn(run, "proxy-flap")
        return self._flapper

    def stats(self) -> ProxyStats:
        with self._lock:
            n = dict(self._n)
            open_conns = sum(1 for c in self._conns if not c.closed.is_set())
            return ProxyStats(mode=self._mode, open_connections=open_conns, **n)

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self, target: object, name: str) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()
        return t

    def _bind(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(_POLL_S)
        self.port = sock.getsockname()[1]
        with self._lock:
            self._listener = sock

    def _unbind(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            self._n["refused_phases"] += 1
        if listener is not None:
            # shutdown first: a plain close lets the accept thread's poll() keep the socket
            # listening for up to one poll interval
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()

    def _watchdog(self) -> None:
        if not self._stop.wait(self.max_lifetime_s):
            self.stop()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stop.wait(_POLL_S)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        mode = self._mode
        if mode in ("reset", "refuse"):
            with self._lock:
                self._n["resets"] += 1
            _rst(client)
            return
        upstream = None
        if mode != "blackhole":
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                _rst(client)  # as the broker would: nothing listens
                return
        conn = _Conn(client, upstream)
        with self._lock:
            self._conns = [c for c in self._conns if not c.closed.is_set()]
            self._conns.append(conn)
            if upstream is not None:
                self._n["connections"] += 1
        self._spawn(lambda: self._pump(conn), "proxy-conn")

    def _reset(self, conn: _Conn) -> None:
        if not conn.closed.is_set():
            conn.close(rst=True)
            with self._lock:
                self._n["resets"] += 1

    def _pump(self, conn: _Conn) -> None:
        """Both directions of one connection, in one thread, until either side closes."""
        pending = {"up": b"", "down": b""}
        try:
            while not self._stop.is_set() and not conn.closed.is_set():
                if not self._step(conn, pending):
                    break
        except OSError:
            pass
        conn.close(rst=False)

    def _step(self, conn: _Conn, pending: dict[str, bytes]) -> bool:
        socks = [conn.client] if conn.upstream is None else [conn.client, conn.upstream]
        if not conn.poisoned:  # back-pressure: a throttled direction stops reading when full
            socks = [
                s for s in socks if len(pending["up" if s is conn.client else "down"]) < _CHUNK
            ]
        readable, _, _ = select.select(socks, [], [], _POLL_S) if socks else ([], [], [])
        if not socks:
            time.sleep(_POLL_S / 5)
        mode = self._mode  # read after the wait: set_mode may have changed it meanwhile
        if mode == "blackhole":
            conn.poisoned = True
        for sock in readable:
            data = sock.recv(_CHUNK)
            if not data:
                return False
            way = "up" if sock is conn.client else "down"
            if conn.poisoned:
                with self._lock:
                    self._n["bytes_discarded"] += len(data)
            else:
                pending[way] += data
        if conn.poisoned or conn.upstream is None:
            return True
        for way, dst, bucket in (
            ("up", conn.upstream, self._up),
            ("down", conn.client, self._down),
        ):
            data = pending[way]
            if not data:
                continue
            n = len(data) if mode != "throttle" else bucket.take(len(data))
            if n:
                with self._lock:  # counted first: the peer may read them before sendall returns
                    self._n[f"bytes_{way}"] += n
                dst.sendall(data[:n])
                pending[way] = data[n:]
        return True
