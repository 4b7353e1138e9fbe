"""Liveness and the systemd notifications: pure rules table-driven, the supervisor with a fake
clock and a fake notifier, the real notifier against real ``AF_UNIX`` datagram sockets."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.capture.thread import CaptureThread
from agent.errors import SourceFinished
from agent.node.liveness import Liveness, beat_state
from agent.node.service import Supervisor, status_line
from agent.node.systemd import SdNotifier, notify_address, watchdog_interval_s
from tests.fakes import FakeClock, FakeNotifier, FakeSource
from tests.notify_support import NotifySocket
from tests.polling import wait_until


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (None, None),
        ("", None),
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@/org/freedesktop/systemd1/notify/123", "\0/org/freedesktop/systemd1/notify/123"),
        ("vsock:2:1234", None),
        ("relative/path", None),
    ],
)
def test_notify_address(value, address):
    assert notify_address(value) == address


@pytest.mark.parametrize(
    ("env", "pid", "interval"),
    [
        ({}, 7, None),
        ({"WATCHDOG_USEC": "30000000"}, 7, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7, None),  # meant for another
        ({"WATCHDOG_USEC": "0"}, 7, None),
        ({"WATCHDOG_USEC": "soon"}, 7, None),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, 7, None),
    ],
)
def test_watchdog_interval(env, pid, interval):
    assert watchdog_interval_s(env, pid) == interval


@pytest.mark.parametrize(
    ("cams", "depth", "connected", "stalled", "line"),
    [
        ([("door", "online")], 0, True, (), "1/1 camera online, outbox 0, mqtt connected"),
        (
            [("door", "online"), ("gate", "reconnecting")], 12, False, (),
            "1/2 cameras online (gate reconnecting), outbox 12, mqtt disconnected",
        ),
        (
            [("a", "starting"), ("b", "finished"), ("c", "online"), ("d", "stopped"),
             ("e", "reconnecting")], 0, True, ("worker-c",),
            "1/5 cameras online (a starting, b finished, d stopped, +1 more), outbox 0, "
            "mqtt connected; stalled: worker-c",
        ),
        ([("x\ny", "online")], 0, True, (), "1/1 camera online, outbox 0, mqtt connected"),
    ],
)  # fmt: skip
def test_status_line_is_one_line(cams, depth, connected, stalled, line):
    assert status_line(cams, depth, connected, stalled) == line


@pytest.mark.parametrize(
    ("ticked", "due", "now", "alive", "retired", "state"),
    [
        (None, 0.0, 100.0, True, False, "waiting"),
        (10.0, 10.0, 14.9, True, False, "ok"),  # grace 5
        (10.0, 10.0, 15.1, True, False, "stalled"),
        (10.0, 40.0, 44.0, True, False, "ok"),  # declared a 30 s wait
        (10.0, 40.0, 45.5, True, False, "stalled"),
        (10.0, 10.0, 11.0, False, False, "dead"),  # thread ended without retiring
        (10.0, 10.0, 99.0, False, True, "done"),
        (None, 0.0, 99.0, False, True, "done"),
    ],
)
def test_beat_state(ticked, due, now, alive, retired, state):
    got = beat_state(
        ticked_at=ticked, due_by=due, now=now, grace_s=5.0, thread_alive=alive, retired=retired
    )
    assert got == state


def test_liveness_tracks_each_beat():
    clock = FakeClock()
    live = Liveness(grace_s=5.0, clock=clock.monotonic)
    worker, capture = live.beat("worker-door"), live.beat("capture-door")
    with pytest.raises(ValueError, match="already registered"):
        live.beat("worker-door")
    assert not live.check().started
    worker.tick()
    capture.tick(allow_s=10.0)  # about to block in a read with a 10 s timeout
    assert live.check().healthy
    clock.advance(6.0)
    worker.tick()
    check = live.check()
    assert check.healthy
    assert [b.silent_s for b in check.beats] == [0.0, 6.0]
    clock.advance(9.5)  # capture: 15.5 s > 10 s + 5 s
    worker.tick()
    check = live.check()
    assert (check.healthy, check.stalled) == (False, ("capture-door",))
    capture.retire()  # a finished file: no longer expected to tick
    assert live.check().healthy


def test_a_thread_that_died_without_retiring_is_dead():
    live = Liveness(grace_s=60.0)
    beat = live.beat("publisher")
    t = threading.Thread(target=beat.tick)
    t.start()
    t.join()
    check = live.check()
    assert check.stalled == ("publisher",)
    assert check.beats[0].state == "dead"


def step(sup: Supervisor) -> None:
    """What the two threads do in one period: refresh the status text, then notify."""
    sup.refresh()
    sup.step()


def make_supervisor(watchdog_s: float | None = 10.0):
    clock = FakeClock()
    live = Liveness(grace_s=watchdog_s or 30.0, clock=clock.monotonic)
    notifier = FakeNotifier()
    state = {"line": "1/1 camera online, outbox 0, mqtt connected"}
    sup = Supervisor(notifier, live, lambda: state["line"], watchdog_s=watchdog_s)
    return sup, live, notifier, clock, state


def test_ready_once_every_thread_ticked_then_pings_while_healthy():
    sup, live, notifier, _clock, state = make_supervisor()
    worker, link = live.beat("worker-door"), live.beat("mqtt-link")
    worker.tick()
    step(sup)
    assert notifier.take() == ["STATUS=starting; 1/1 camera online, outbox 0, mqtt connected"]
    link.tick()
    step(sup)
    assert notifier.take() == [
        "READY=1", "STATUS=1/1 camera online, outbox 0, mqtt connected", "WATCHDOG=1",
    ]  # fmt: skip
    step(sup)  # nothing changed: a ping only
    assert notifier.take() == ["WATCHDOG=1"]
    state["line"] = "1/1 camera online, outbox 3, mqtt disconnected"
    step(sup)
    assert notifier.take() == [
        "STATUS=1/1 camera online, outbox 3, mqtt disconnected",
        "WATCHDOG=1",
    ]
    assert sup.stats().pings == 3


def test_a_stalled_thread_withholds_pings_until_it_moves_again():
    sup, live, notifier, clock, _ = make_supervisor(watchdog_s=10.0)
    worker, publisher = live.beat("worker-door"), live.beat("publisher")
    worker.tick(1.0)
    publisher.tick(1.0)
    step(sup)
    notifier.take()
    for _ in range(3):  # the publisher hangs; the worker goes on
        clock.advance(5.0)
        worker.tick(1.0)
        step(sup)
    assert notifier.take() == [
        "WATCHDOG=1",  # 5 s silent: within 1 s + 10 s
        "WATCHDOG=1",  # 10 s
        "STATUS=1/1 camera online, outbox 0, mqtt connected; stalled: publisher",  # 15 s
    ]
    clock.advance(5.0)
    worker.tick(1.0)
    step(sup)
    assert notifier.take() == []
    publisher.tick(1.0)
    step(sup)
    assert notifier.take() == ["STATUS=1/1 camera online, outbox 0, mqtt connected", "WATCHDOG=1"]
    stats = sup.stats()
    assert (stats.pings, stats.withheld, stats.stalled) == (4, 2, ())


def test_no_watchdog_no_pings_but_ready_status_and_stopping():
    sup, live, notifier, _clock, _ = make_supervisor(watchdog_s=None)
    live.beat("heartbeat").tick()
    step(sup)
    step(sup)
    sup.stopping()
    assert notifier.assignments() == [
        "READY=1",
        "STATUS=1/1 camera online, outbox 0, mqtt connected",
        "STOPPING=1",
        "STATUS=stopping: ending events, draining the outbox",
    ]


def test_a_failing_status_does_not_stop_the_pings():
    clock = FakeClock()
    live = Liveness(grace_s=10.0, clock=clock.monotonic)
    notifier = FakeNotifier()

    def broken() -> str:
        raise RuntimeError("outbox closed")

    sup = Supervisor(notifier, live, broken, watchdog_s=10.0)
    live.beat("publisher").tick()
    step(sup)
    assert notifier.take() == ["READY=1", "STATUS=state unknown", "WATCHDOG=1"]


def test_a_component_hung_under_describe_cannot_silence_the_verdict():
    """The status text needs the outbox, whose lock a hung worker holds: the notifying thread
    still withholds the pings and says which thread stalled (real threads, short watchdog)."""
    live = Liveness(grace_s=0.5)
    hung, release = threading.Event(), threading.Event()

    def describe() -> str:
        if hung.is_set():
            release.wait(30)  # blocked behind the hung component
        return "1/1 camera online, outbox 0, mqtt connected"

    notifier = FakeNotifier()
    sup = Supervisor(notifier, live, describe, watchdog_s=0.5)
    worker = live.beat("worker-door")
    worker.tick()
    sup.start()
    try:
        healthy = "STATUS=1/1 camera online, outbox 0, mqtt connected"
        assert wait_until(lambda: worker.tick() or healthy in notifier.assignments())
        hung.set()  # the worker hangs holding the lock describe() needs: no more ticks
        stalled = healthy + "; stalled: worker-door"
        assert wait_until(lambda: stalled in notifier.assignments())
    finally:
        release.set()
        sup.stopping()
    lines = notifier.assignments()
    assert lines[0] == "READY=1"
    assert "WATCHDOG=1" not in lines[lines.index(stalled) :]
    assert sup.stats().stalled == ("worker-door",)


def test_not_under_systemd_nothing_runs():
    sup = Supervisor.from_env(lambda: "x", {})
    assert not sup.notifier.enabled
    sup.start()
    sup.stopping()
    assert sup.stats().ready is False
    assert SdNotifier(None).notify("READY=1") is False


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notifier_sends_one_datagram_per_message(tmp_path: Path, abstract: bool):
    sock = NotifySocket(None if abstract else tmp_path / "notify")
    try:
        notifier = SdNotifier.from_env({"NOTIFY_SOCKET": sock.address})
        assert notifier.enabled
        assert notifier.notify("READY=1\nSTATUS=up")
        assert notifier.notify("WATCHDOG=1")
        assert sock.wait_for(lambda ls: len(ls) == 3, 5)
        assert sock.lines == ["READY=1", "STATUS=up", "WATCHDOG=1"]
        notifier.close()
    finally:
        sock.close()


def test_sd_notifier_survives_a_vanished_socket(tmp_path: Path, caplog):
    notifier = SdNotifier(str(tmp_path / "gone"))
    assert notifier.notify("WATCHDOG=1") is False
    assert notifier.notify("WATCHDOG=1") is False
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1


def test_capture_thread_ticks_and_retires_on_a_finished_source():
    live = Liveness(grace_s=60.0)
    capture = CaptureThread(FakeSource(frames=3), read_timeout_s=1.0, open_timeout_s=1.0)
    capture.progress = live.beat("capture-fake")
    capture.start()
    got = 0
    while True:
        try:
            got += capture.slot.get(timeout=5.0) is not None
        except SourceFinished:
            break
    assert capture.join(5.0)
    (beat,) = live.check().beats
    assert got == 3
    assert beat.state == "done"
    assert beat.ticks >= 4  # the open, then one per read
    assert live.check().healthy
