"""The fault proxy itself, against a real echo server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faultproxy import FaultProxy
from tests.polling import wait_until


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server (one thread per connection), closed after the test."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    srv.close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy(echo_port, max_lifetime_s=60) as p:
        yield p


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock.settimeout(2)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_pass_forwards_both_ways_and_counts_bytes(proxy: FaultProxy) -> None:
    with connect(proxy.port) as s:
        s.sendall(b"hello" * 1000)
        assert recv_exactly(s, 5000) == b"hello" * 1000
    st = proxy.stats()
    assert st.connections == 1
    assert st.bytes_up == st.bytes_down == 5000
    assert st.bytes_discarded == 0


def test_blackhole_reads_and_answers_nothing_and_the_stream_stays_dead(
    proxy: FaultProxy,
) -> None:
    s = connect(proxy.port)
    s.sendall(b"ping")
    assert recv_exactly(s, 4) == b"ping"
    proxy.set_mode("blackhole")
    s.sendall(b"lost" * 100)  # the client's writes succeed
    s.settimeout(0.3)
    with pytest.raises(TimeoutError):
        s.recv(10)
    assert wait_until(lambda: proxy.stats().bytes_discarded == 400, 3.0)
    fresh = connect(proxy.port)  # accepted during the blackhole, never answered either
    fresh.sendall(b"x")
    assert wait_until(lambda: proxy.stats().bytes_discarded == 401, 3.0)  # accepted, read, dropped
    proxy.set_mode("pass")
    s.sendall(b"again")  # a stream that lost bytes cannot be whole again: still nothing
    fresh.settimeout(0.3)
    for sock in (s, fresh):
        with pytest.raises(TimeoutError):
            sock.recv(10)
    with connect(proxy.port) as ok:  # a new connection after the blackhole works
        ok.sendall(b"back")
        assert recv_exactly(ok, 4) == b"back"
    s.close()
    fresh.close()


def test_reset_sends_rst_to_open_and_new_connections(proxy: FaultProxy) -> None:
    s = connect(proxy.port)
    s.sendall(b"a")
    assert recv_exactly(s, 1) == b"a"
    proxy.set_mode("reset")
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    s.close()
    # the RST may come at connect() or at the first read
    with pytest.raises(ConnectionResetError), connect(proxy.port) as n:
        n.recv(10)
    assert proxy.stats().resets == 2


def test_refuse_closes_the_port_and_pass_reopens_it(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    proxy.set_mode("pass")
    assert proxy.port == port
    with connect(port) as s:
        s.sendall(b"ok")
        assert recv_exactly(s, 2) == b"ok"
    assert proxy.stats().refused_phases == 1


def test_throttle_never_forwards_more_than_the_rate_allows(proxy: FaultProxy) -> None:
    rate = 32 * 1024
    proxy.set_mode("throttle", rate=rate)
    with connect(proxy.port) as s:
        t0 = time.monotonic()
        s.sendall(b"z" * 48 * 1024)
        assert recv_exactly(s, 48 * 1024) == b"z" * 48 * 1024
        elapsed = time.monotonic() - t0
    # an upper bound on bytes for the time taken (a slow machine only makes it truer)
    assert proxy.stats().bytes_up <= rate * elapsed + rate / 10


def test_flap_is_bounded_counts_its_down_phases_and_ends_in_pass(proxy: FaultProxy) -> None:
    thread = proxy.flap(up_s=0.2, down_s=0.2, duration_s=1.0, down_mode="reset")
    thread.join(5)
    assert not thread.is_alive()
    st = proxy.stats()
    assert st.flaps >= 1
    assert st.mode == "pass"
    with connect(proxy.port) as s:
        s.sendall(b"up")
        assert recv_exactly(s, 2) == b"up"


def test_modes_and_rates_are_checked(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown proxy mode"):
        proxy.set_mode("drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate"):
        proxy.set_mode("throttle")


def test_the_proxy_stops_by_itself_after_its_lifetime(echo_port: int) -> None:
    p = FaultProxy(echo_port, max_lifetime_s=0.3).start()
    try:
        assert wait_until(lambda: not any(t.is_alive() for t in p._threads), 5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p.port), timeout=2)
    finally:
        p.stop()
