"""Faults injected for real, and what the commune server sees afterwards.

Real processes throughout: ``edge-agent run`` as a subprocess with a config file, a real
Mosquitto (stopped, restarted, frozen with SIGSTOP), our own TCP proxy (tests/faultproxy.py)
black-holing, resetting and flapping the link, the agent SIGKILLed at random moments while a
live looping RTSP camera plays, a real small filesystem filling up, and ``faketime`` setting the
wall clock back. After each fault, the server's view (tests/fault_support.py): every committed
event arrived (``seq`` without a gap; duplicates only as the same id), every visit that got
``new`` got an ``end``, and the outbox passes ``PRAGMA integrity_check`` once the agent stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MEDIA
from tests.fault_support import (
    AgentProcess,
    RssSampler,
    agent,
    assert_every_visit_ended,
    assert_everything_delivered,
    drain,
    events,
    heartbeats,
    integrity,
    outbox_ids,
    outbox_stats,
    server_view,
    wait_until,
)
from tests.faultproxy import FaultProxy
from tests.mqtt_support import Mosquitto, Received, Subscriber
from tests.rtsp_server import SYSTEM_PYTHON, free_port, port_open
from tests.rtsp_support import CLIP, rtsp_unavailable
from tests.test_end_to_end import BASE, write_config

SHORT_CLIP = MEDIA / "ozlu_pedestrian_survaillance.mp4"  # 8 s, 1-6 people on a walkway
LOOP_CAMERA = (
    Path(os.environ.get("EDGE_AGENT_SHARED", MEDIA.parent)) / "recipes" / ("rtsp-loop-camera.py")
)
KEEPALIVE_S = 5
END_REASONS = {"restart", "timeout", "shutdown", "source_finished"}


def fault_config(
    tmp: Path, port: int, *, camera: dict[str, Any] | None = None, **sections: Any
) -> Path:
    """write_config's agent (keepalive 5 s, heartbeat 1 s) with camera keys and sections merged."""
    path = write_config(tmp, port, **(camera or {}))
    cfg = json.loads(path.read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return path


def db_of(config: Path) -> Path:
    return Path(json.loads(config.read_text())["outbox"]["path"])


def seqs_of(msgs: list[Received]) -> set[int]:
    return {e["seq"] for e in events(msgs)}


def wait_delivered(
    server: Subscriber, last_seq: int, first_seq: int = 1, timeout: float = 30
) -> None:
    want = set(range(first_seq, last_seq + 1))
    got = server.wait_for(lambda ms: want <= seqs_of(ms), timeout)
    assert got, f"missing seqs: {sorted(want - seqs_of(server.messages))[:20]}"


def finish_and_check(
    config: Path, server: Subscriber, *, first_seq: int = 1, visits: bool = True
) -> Any:
    """After the agent stopped: drain what is left, then the server's whole view."""
    stats = outbox_stats(config)
    if stats["depth"]:
        drain(config)
    assert integrity(db_of(config)) == "ok"
    wait_delivered(server, stats["last_seq"], first_seq)
    view = server_view(events(server.messages), first_seq=first_seq)
    assert_everything_delivered(view, stats["last_seq"])
    if visits:
        assert_every_visit_ended(view)
    return view


@pytest.fixture
def pbroker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that keeps the server's session (and its queued messages) across restarts."""
    b = Mosquitto(tmp_path / "broker", persistent=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def server(pbroker: Mosquitto) -> Iterator[Subscriber]:
    """The commune server: a persistent QoS 1 session on the node's whole subtree."""
    sub = Subscriber(pbroker.port, f"{BASE}/#", persistent=True)
    yield sub
    sub.close()


# -- the broker ---------------------------------------------------------------------------------


def test_broker_down_for_the_whole_run_then_started_and_drained(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistent=True)  # not started yet
    config = fault_config(tmp_path, broker.port, camera={"source": str(SHORT_CLIP)})
    with agent(config, tmp_path / "logs") as a:
        assert a.proc.wait(120) == 0, a.log()[-3000:]
    queued = outbox_stats(config)
    assert queued["depth"] > 0, "the broker never came: everything must still be queued"
    broker.start()
    try:
        server = Subscriber(broker.port, f"{BASE}/#", persistent=True)
        try:
            view = finish_and_check(config, server)
            assert view.duplicate_factor == 1.0
        finally:
            server.close()
    finally:
        broker.stop()
    assert outbox_stats(config)["depth"] == 0


def test_broker_restarted_repeatedly_under_load(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    rng = random.Random(20261201)
    config = fault_config(
        tmp_path, pbroker.port, camera={"source": str(SHORT_CLIP), "loop": True}
    )  # a file looping as fast as the detector goes: a steady stream of visits
    restarts = 0
    with agent(config, tmp_path / "logs") as a:
        assert server.wait_for(lambda ms: len(events(ms)) >= 3, 60), a.log()[-3000:]
        while restarts < 6:
            time.sleep(rng.uniform(1.0, 3.0))
            pbroker.restart()
            restarts += 1
            assert a.alive(), a.log()[-3000:]
        n = len(server.messages)
        assert server.wait_for(lambda ms: len(events(ms[n:])) >= 3, 60)  # flowing again
        assert a.terminate() == 0, a.log()[-3000:]
    view = finish_and_check(config, server)
    beats = heartbeats(server.messages)
    assert max(b["link"]["connects"] for b in beats) >= 2
    assert max(b["link"]["disconnects"] for b in beats) >= 1
    print(
        f"broker restarts: {restarts}, events {view.unique}, dup factor {view.duplicate_factor:.3f}"
    )


def test_frozen_broker_keeps_rows_until_puback_and_the_dead_link_is_found(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    config = fault_config(tmp_path, pbroker.port, camera={"realtime": True, "loop": True})
    db = db_of(config)
    lost = f"connection to 127.0.0.1:{pbroker.port} lost"
    with agent(config, tmp_path / "logs") as a:
        # the first person is in view about 6.4 s into the clip
        assert server.wait_for(lambda ms: any(e["type"] == "new" for e in events(ms)), 60)
        pbroker.freeze()
        try:
            time.sleep(1.0)  # PUBACKs already on the wire are taken in
            held = outbox_ids(db, a)
            # found dead by the keepalive while the broker is still frozen
            assert wait_until(lambda: lost in a.log(), 5 * KEEPALIVE_S), a.log()[-3000:]
            assert wait_until(lambda: len(outbox_ids(db, a)) > len(held), 40)  # events still come
            still = outbox_ids(db, a)
            assert held <= still, f"deleted before their PUBACK: {sorted(held - still)}"
        finally:
            pbroker.thaw()
        n = len(server.messages)
        # delivery resumes; the next heartbeats report the loss
        assert server.wait_for(lambda ms: still <= _ids(ms), 30)
        assert server.wait_for(
            lambda ms: any(b["link"]["disconnects"] >= 1 for b in heartbeats(ms[n:])), 30
        )
        skipped = max(b["link"]["heartbeats_skipped"] for b in heartbeats(server.messages[n:]))
        assert skipped >= 1  # heartbeats due while the link was dead were skipped and counted
        assert a.terminate() == 0, a.log()[-3000:]
    finish_and_check(config, server)


def _ids(msgs: list[Received]) -> set[str]:
    """Ids of delivered events and snapshots (a snapshot's id is its event message id + .jpg)."""
    out = {e["id"] for e in events(msgs)}
    out |= {m.properties.get("id", "") for m in msgs if "/snapshots/" in m.topic}
    return out


# -- the link, through our proxy ------------------------------------------------------------------


@pytest.mark.slow
def test_blackholed_reset_and_flapping_link_for_a_minute(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    rss = RssSampler()
    with FaultProxy(pbroker.port, max_lifetime_s=300) as proxy:
        config = fault_config(tmp_path, proxy.port, camera={"realtime": True, "loop": True})
        with agent(config, tmp_path / "logs") as a:

            def hold(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    rss.sample(a)
                    assert a.alive(), a.log()[-3000:]
                    time.sleep(0.5)

            hold(8)
            proxy.set_mode("blackhole")
            hold(3 * KEEPALIVE_S)  # only the keepalive can tell
            proxy.set_mode("pass")
            hold(5)
            for _ in range(3):
                proxy.set_mode("reset")
                hold(0.5)
                proxy.set_mode("pass")
                hold(3)
            flapping = proxy.flap(up_s=3, down_s=2, duration_s=25)
            while flapping.is_alive():
                hold(1)
            n = len(server.messages)
            assert server.wait_for(lambda ms: len(heartbeats(ms[n:])) >= 2, 30)
            beat = heartbeats(server.messages)[-1]
            assert beat["link"]["disconnects"] >= 5, beat["link"]  # blackhole, 3 resets, flaps
            assert a.terminate() == 0, a.log()[-3000:]
            assert "lost" in a.log()
        view = finish_and_check(config, server)  # the proxy passes for the drain
        st = proxy.stats()
    rss.assert_stable()
    print(
        f"flap: events {view.unique} received {view.received} dup factor "
        f"{view.duplicate_factor:.3f}; proxy {st}; rss max {max(rss.samples) / 2**20:.0f} MiB"
    )


# -- the agent killed at random moments -----------------------------------------------------------


@contextlib.contextmanager
def loop_camera(logs: Path) -> Iterator[str]:
    """The shared looping RTSP camera (a live source that never ends), killed by pid."""
    reason = rtsp_unavailable()
    if reason:
        pytest.skip(reason)
    if not LOOP_CAMERA.exists():
        pytest.skip(f"{LOOP_CAMERA} not found")
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "camera.log").open("wb") as out:
        proc = subprocess.Popen([SYSTEM_PYTHON, str(LOOP_CAMERA), str(CLIP), str(port)],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    keeper: subprocess.Popen[bytes] | None = None
    try:
        assert wait_until(lambda: port_open(port), 30), (logs / "camera.log").read_text()
        url = f"rtsp://127.0.0.1:{port}/cam"
        # A real camera streams on whatever its viewers do; this server restarts the clip
        # when its last viewer leaves. A viewer of our own keeps the stream going, so each
        # restarted agent joins it mid-clip (people in view) instead of at 0 s (nobody yet).
        gst = shutil.which("gst-launch-1.0")
        if gst is None:
            pytest.skip("gst-launch-1.0 not installed (Debian: gstreamer1.0-tools)")
        with (logs / "keeper.log").open("wb") as out:
            keeper = subprocess.Popen(
                [gst, "-q", "rtspsrc", f"location={url}", "protocols=tcp", "!", "fakesink"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        yield url
    finally:
        for p in (keeper, proc):
            if p is not None:
                p.kill()
                p.wait(10)


@pytest.mark.slow
@pytest.mark.rtsp
def test_agent_sigkilled_at_50_random_moments_with_a_live_camera(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    rng = random.Random(10)
    rss = RssSampler()
    logs = tmp_path / "logs"
    with loop_camera(logs) as url:
        config = fault_config(
            tmp_path, pbroker.port,
            camera={"source": url, "open_timeout_s": 5, "read_timeout_s": 3},
        )  # fmt: skip
        kills = 0
        while kills < 50:
            a = AgentProcess(config, logs)
            try:
                end = time.monotonic() + rng.uniform(0.5, 6.0)
                while time.monotonic() < end:
                    rss.sample(a)
                    time.sleep(0.25)
                assert a.alive(), a.log()[-3000:]
            finally:
                a.kill()
            kills += 1
        with agent(config, logs) as a:
            n = len(server.messages)
            assert server.wait_for(lambda ms: len(heartbeats(ms[n:])) >= 3, 60), a.log()[-3000:]
            assert a.terminate() == 0, a.log()[-3000:]
    assert integrity(db_of(config)) == "ok"
    beats = heartbeats(server.messages)
    cam_log = (logs / "camera.log").read_text(errors="replace")[-1000:]
    assert outbox_stats(config)["last_seq"] > 0, (
        f"no event committed; last heartbeat cameras: {beats[-1]['cameras'] if beats else None}"
        f"; camera log: {cam_log}; agent log: {(logs / 'stderr').read_text()[-2000:]}"
    )
    view = finish_and_check(config, server, visits=False)
    new = sum(1 for e in events(server.messages) if e["type"] == "new")
    print(
        f"kills {kills}: seq 1..{view.seqs[-1]}, visits {new}, dup {view.duplicate_factor:.3f}, "
        f"end reasons {dict(view.end_reasons)}, rss max {max(rss.samples) / 2**20:.0f} MiB"
    )
    assert new >= 5, "the kills must have caught visits in progress"
    rss.assert_stable()
    assert_every_visit_ended(view)  # needs: restart ends visits a crash left open
    assert set(view.end_reasons) <= END_REASONS, dict(view.end_reasons)
    assert view.end_reasons["restart"] >= 1


# -- bad messages, bad files, full disks, wrong clocks --------------------------------------------


def test_oversized_snapshots_are_dead_lettered_and_events_flow(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    config = fault_config(
        tmp_path, pbroker.port, camera={"source": str(SHORT_CLIP)},
        mqtt={"max_payload_bytes": 1024}, snapshots={"max_width": 640, "quality": 95},
    )  # fmt: skip
    with agent(config, tmp_path / "logs") as a:
        assert a.proc.wait(120) == 0, a.log()[-3000:]
    finish_and_check(config, server)
    evs = events(server.messages)
    with_snapshot = [e for e in evs if e["has_snapshot"]]
    assert with_snapshot
    assert not [m for m in server.messages if "/snapshots/" in m.topic]  # none fits in 1 KiB
    stats = outbox_stats(config)
    assert stats["dead_letters"] == len({e["id"] for e in with_snapshot})
    assert stats["depth"] == 0


def test_corrupt_outbox_is_quarantined_and_the_agent_runs(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    config = fault_config(tmp_path, pbroker.port, camera={"source": str(SHORT_CLIP)})
    db = db_of(config)
    db.parent.mkdir(parents=True)
    garbage = os.urandom(64 * 1024)
    db.write_bytes(garbage)
    with agent(config, tmp_path / "logs") as a:
        rc = a.proc.wait(120)
        log = a.log()
    assert rc == 0, log[-3000:]  # neither 1 nor 3: a service manager would restart it forever
    (moved,) = db.parent.glob("outbox.db.corrupt-*")
    assert moved.read_bytes() == garbage
    assert str(moved) in log
    first = min(seqs_of(server.messages))
    finish_and_check(config, server, first_seq=first)
    assert outbox_stats(config)["quarantined"] == 1  # the new file is healthy and says why


# -- disk full ------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "5m") -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; the bytes written."""
    n = 0
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
                n += len(chunk)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
                n += 512
    return n


def test_disk_full_is_reported_without_a_crash_and_recovers(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    with small_tmpfs(tmp_path / "data"):
        config = fault_config(tmp_path, pbroker.port, camera={"realtime": True, "loop": True})
        filler = tmp_path / "data" / "filler"
        with agent(config, tmp_path / "logs") as a:
            assert server.wait_for(lambda ms: len(heartbeats(ms)) >= 1, 30), a.log()[-3000:]
            assert fill(filler) > 0
            n = len(server.messages)
            # the visit that starts about 6.4 s into the clip cannot be stored
            reported = wait_until(
                lambda: (
                    "full" in a.log().lower()
                    or any(
                        c["errors"] > 0
                        for b in heartbeats(server.messages[n:])
                        for c in b["cameras"]
                    )
                ),
                60,
            )
            assert reported, a.log()[-3000:]
            assert a.alive(), a.log()[-3000:]
            before = max(seqs_of(server.messages), default=0)
            filler.unlink()  # space returns
            assert server.wait_for(lambda ms: max(seqs_of(ms), default=0) > before, 60), (
                "no event delivered after the space came back\n" + a.log()[-3000:]
            )
            assert a.alive()
            assert a.terminate() == 0, a.log()[-3000:]
        finish_and_check(config, server)


# -- clocks -------------------------------------------------------------------------------------


FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/arm-linux-gnueabihf/faketime/libfaketime.so.1",
)


def faketime_env(offset: str) -> dict[str, str]:
    """libfaketime preloaded into the agent itself (the ``faketime`` wrapper would sit between
    the test and the agent, so a kill by pid would miss the agent). The wall clock jumps; the
    monotonic clock does not (as on a real box whose NTP or RTC sets the time).

    libfaketime 0.9.10 limits what can be tested this way: with the monotonic clock left real,
    Python's ``time.sleep`` fails with EINVAL (its absolute clock_nanosleep is mistranslated),
    and with it faked, timed waits on it hung the agent. So these tests replay files at full
    speed (no pacing sleeps) and set the clock at start; a jump in the middle of a live run
    cannot be made faithfully with it."""
    lib = next((p for p in FAKETIME_LIBS if Path(p).exists()), None)
    if lib is None:
        pytest.skip("libfaketime not installed (Debian: faketime; make setup-tests installs it)")
    return {"LD_PRELOAD": lib, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_restart_with_the_clock_set_back_years_keeps_seq_monotonic(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    back = faketime_env("-3650d")
    config = fault_config(tmp_path, pbroker.port, camera={"source": str(SHORT_CLIP)})
    db = db_of(config)
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(8192))  # start from a quarantine: seq seeded from the real clock
    with agent(config, tmp_path / "logs") as a:
        assert a.proc.wait(120) == 0, a.log()[-3000:]
    first_run = seqs_of(server.messages)
    assert first_run
    with agent(config, tmp_path / "logs", env=back) as a:  # the same file, ten years ago
        assert a.proc.wait(120) == 0, a.log()[-3000:]
    second_run = seqs_of(server.messages) - first_run
    assert second_run
    assert min(second_run) > max(first_run)
    finish_and_check(config, server, first_seq=min(first_run))


def test_quarantine_with_the_clock_set_back_years_keeps_seq_monotonic(
    tmp_path: Path, pbroker: Mosquitto, server: Subscriber
) -> None:
    """A Pi without an RTC boots at its last shutdown time or in 1970: a corrupt outbox found
    then must not restart ``seq`` below what the server already has (high-water mark)."""
    back = faketime_env("-3650d")
    config = fault_config(tmp_path, pbroker.port, camera={"source": str(SHORT_CLIP)})
    db = db_of(config)
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(8192))
    with agent(config, tmp_path / "logs") as a:
        assert a.proc.wait(120) == 0, a.log()[-3000:]
    first_run = seqs_of(server.messages)
    assert first_run
    db.write_bytes(os.urandom(8192))  # lost again, and the clock is ten years back
    for extra in db.parent.glob("outbox.db-*"):
        extra.unlink()
    with agent(config, tmp_path / "logs", env=back) as a:
        assert a.proc.wait(120) == 0, a.log()[-3000:]
    second_run = seqs_of(server.messages) - first_run
    assert second_run
    assert min(second_run) > max(first_run), "seq went backwards after the quarantine"
