"""The whole agent on a live RTSP camera: the real CLI as a subprocess, a real RTSP server
(gst-rtsp-server run by the system Python, see tests/rtsp_server.py), the real model, a real
Mosquitto and a real subscriber, as the commune server would see it.

The RTSP tests need Debian ``python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp
gstreamer1.0-plugins-{base,good,bad}`` and are skipped with the reason when they are missing
(as in tests/test_rtsp.py). The unreachable-camera test needs no server and always runs.

The server plays one-by-one-person-detection.mp4 live at 10 fps, from its start on every new
connection: the first person stands by the table from about 6.4 s.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.mqtt_support import Mosquitto, Received, Subscriber
from tests.rtsp_server import RtspServer, free_port
from tests.test_end_to_end import BASE, agent_cmd, write_config

USER = "viewer"
PASSWORD = "s3cret-pw"
HASH_PASSWORD = "pa#ss/w?rd"
HEARTBEAT = f"{BASE}/heartbeat"

Json = dict[str, Any]


@contextlib.contextmanager
def running_agent(config: Path, logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``edge-agent run`` as a subprocess, stdout and stderr to files (a pipe nobody reads
    could fill and block the agent); killed by pid if the test did not stop it."""
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        proc = subprocess.Popen(agent_cmd("run", "--config", str(config)), stdout=out, stderr=err)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop_agent(proc: subprocess.Popen[bytes], logs: Path) -> None:
    """SIGTERM: the agent must exit 0."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, stderr_tail(logs)


def stderr_tail(logs: Path, n: int = 3000) -> str:
    return (logs / "stderr").read_text(errors="replace")[-n:]


def config_with(path: Path, **changes: Any) -> Path:
    """Rewrite the config ``write_config`` made with top-level keys replaced."""
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return path


def beats(msgs: list[Received], since: int = 0) -> list[Json]:
    return [json.loads(m.payload) for m in msgs[since:] if m.topic == HEARTBEAT]


def camera(beat: Json, cam_id: str = "door") -> Json:
    (cam,) = (c for c in beat["cameras"] if c["id"] == cam_id)
    return cam


def wait_beat(
    sub: Subscriber, pred: Callable[[Json], bool], *, since: int, timeout: float
) -> tuple[float, Json]:
    """The first heartbeat from message ``since`` on that satisfies ``pred``, and the seconds
    until it arrived; fails the test after ``timeout``."""
    start = time.monotonic()
    found: list[Json] = []

    def seen(msgs: list[Received]) -> bool:
        found[:] = [b for b in beats(msgs, since) if pred(b)][:1]
        return bool(found)

    if not sub.wait_for(seen, timeout):
        last = beats(sub.messages, since)[-1:]
        pytest.fail(f"no such heartbeat within {timeout} s; last one: {last}")
    return time.monotonic() - start, found[0]


def states(msgs: list[Received]) -> list[str]:
    return [json.loads(m.payload)["state"] for m in msgs if m.topic == f"{BASE}/status"]


def person_events(msgs: list[Received]) -> list[Json]:
    evs = [json.loads(m.payload) for m in msgs if m.topic == f"{BASE}/events"]
    return [e for e in evs if e["label"] == "person"]


def new_person_with_snapshot(msgs: list[Received]) -> bytes | None:
    """The JPEG of the first person ``new`` event whose snapshot has arrived."""
    snaps = {m.topic: m.payload for m in msgs if "/snapshots/" in m.topic}
    for m in msgs:
        if m.topic != f"{BASE}/events":
            continue
        ev = json.loads(m.payload)
        if ev["type"] == "new" and ev["label"] == "person" and ev["has_snapshot"]:
            jpeg = snaps.get(ev["snapshot_topic"])
            if jpeg is not None:
                return jpeg
    return None


@pytest.mark.rtsp
def test_live_camera_events_and_camera_reboot(
    tmp_path: Path, broker: Mosquitto, make_server: Callable[..., RtspServer]
) -> None:
    """Online, heartbeats, a person event with its JPEG; the RTSP server is killed and
    restarted on the same port: reconnecting, then online again, the agent never exits."""
    server = make_server()
    config = write_config(
        tmp_path, broker.port, source=server.url, open_timeout_s=5, read_timeout_s=3
    )
    sub = Subscriber(broker.port, f"{BASE}/#")
    try:
        with running_agent(config, tmp_path) as proc:
            assert sub.wait_for(lambda ms: "online" in states(ms), 30), stderr_tail(tmp_path)
            _, beat = wait_beat(
                sub,
                lambda b: camera(b)["state"] == "online" and camera(b)["fps_in"] > 0,
                since=0,
                timeout=30,
            )
            online_at = time.monotonic()
            assert camera(beat)["reconnects"] == 0
            assert camera(beat)["last_error"] is None

            # the first person is in view about 6.4 s into the clip
            assert sub.wait_for(lambda ms: new_person_with_snapshot(ms) is not None, 40)
            jpeg = new_person_with_snapshot(sub.messages)
            assert jpeg is not None
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None
            assert 0 < image.shape[1] <= 480

            # a camera that has been up a while (past the capture's 10 s "healthy" mark)...
            time.sleep(max(0.0, online_at + 11 - time.monotonic()))
            live = [camera(b) for b in beats(sub.messages)][-10:]
            assert all(c["state"] == "online" and c["reconnects"] == 0 for c in live), live
            # ...reboots: the server dies, and comes back on the same port
            since = len(sub.messages)
            killed = time.time()
            server.kill()
            took_down, beat = wait_beat(
                sub, lambda b: camera(b)["state"] != "online", since=since, timeout=15
            )
            down_ts = beat["ts"] - killed
            assert camera(beat)["state"] == "reconnecting"
            assert camera(beat)["last_error"]
            # a reopen is tried (and fails) while the server is down
            wait_beat(
                sub,
                lambda b: camera(b)["state"] == "reconnecting" and camera(b)["reconnects"] >= 1,
                since=since,
                timeout=15,
            )
            assert proc.poll() is None, stderr_tail(tmp_path)

            since = len(sub.messages)
            restarted = time.time()
            server.start()  # same port, new process
            took_up, beat = wait_beat(
                sub,
                lambda b: (
                    camera(b)["state"] == "online"
                    and camera(b)["reconnects"] >= 1
                    and camera(b)["fps_in"] > 0
                ),
                since=since,
                timeout=30,
            )
            print(
                f"RTSP camera reboot: first heartbeat saying reconnecting taken "
                f"{down_ts:.1f} s and received {took_down:.1f} s after the kill; first saying "
                f"online again taken {beat['ts'] - restarted:.1f} s and received "
                f"{took_up:.1f} s after the restart ({restarted - killed:.1f} s later); "
                f"reconnects={camera(beat)['reconnects']}"
            )
            assert proc.poll() is None, stderr_tail(tmp_path)
            # the new stream's frames reach the pipeline (half are not due at detect_fps 5)
            skipped = camera(beat)["frames_skipped"]
            wait_beat(
                sub, lambda b: camera(b)["frames_skipped"] >= skipped + 5, since=0, timeout=10
            )
            # the clip starts again on the new connection: the visit the reboot cut short
            # ends, and the person's next appearance is a new event with its JPEG
            first = person_events(sub.messages)[0]["event_id"]
            assert sub.wait_for(
                lambda ms: (
                    any(e["event_id"] == first and e["type"] == "end" for e in person_events(ms))
                    and new_person_with_snapshot(ms[since:]) is not None
                ),
                30,
            ), stderr_tail(tmp_path)
            assert proc.poll() is None, stderr_tail(tmp_path)
            stop_agent(proc, tmp_path)
        assert sub.wait_for(lambda ms: states(ms)[-1:] == ["offline"], 10)
        assert states(sub.messages) == ["online", "offline"]  # the MQTT link never dropped
    finally:
        sub.close()


@pytest.mark.rtsp
def test_camera_password_never_leaves_the_box(
    tmp_path: Path, broker: Mosquitto, make_server: Callable[..., RtspServer]
) -> None:
    """A camera URL with user:password (the server checks it) and one with a wrong password:
    neither password is in the agent's logs (at DEBUG) or in anything it publishes, even in
    ``last_error`` after an authentication failure and after the camera went away."""
    server = make_server(user=USER, password=PASSWORD)
    assert PASSWORD in server.url
    config = write_config(
        tmp_path, broker.port, source=server.url, open_timeout_s=5, read_timeout_s=3
    )
    wrong = server.url.replace(PASSWORD, PASSWORD + "-wrong")
    # typed as is, '#' ends the authority for FFmpeg: the camera fails, the password must not leak
    hashed = server.url.replace(PASSWORD, HASH_PASSWORD)
    door = json.loads(config.read_text())["cameras"][0]
    config_with(
        config,
        cameras=[
            door,
            {**door, "id": "wrong", "source": wrong},
            {**door, "id": "hash", "source": hashed},
        ],
        logging={"level": "DEBUG"},
    )
    sub = Subscriber(broker.port, "#")
    try:
        with running_agent(config, tmp_path) as proc:
            # the right credentials really are used: frames flow
            wait_beat(
                sub,
                lambda b: camera(b)["state"] == "online" and camera(b)["fps_in"] > 0,
                since=0,
                timeout=30,
            )
            _, beat = wait_beat(
                sub,
                lambda b: (
                    camera(b, "wrong")["reconnects"] >= 1
                    and camera(b, "wrong")["last_error"] is not None
                ),
                since=0,
                timeout=30,
            )
            assert camera(beat, "wrong")["state"] == "reconnecting"
            assert camera(beat, "wrong")["fps_in"] == 0
            assert camera(beat, "hash")["last_error"] is not None
            since = len(sub.messages)
            server.kill()  # the good camera now fails, and its reopen attempts too
            _, beat = wait_beat(
                sub,
                lambda b: camera(b)["state"] == "reconnecting" and camera(b)["reconnects"] >= 1,
                since=since,
                timeout=20,
            )
            assert proc.poll() is None, stderr_tail(tmp_path)
            stop_agent(proc, tmp_path)
        assert sub.wait_for(lambda ms: states(ms)[-1:] == ["offline"], 10)
    finally:
        sub.close()

    # the errors name the camera, with its password masked (so the check below is not vacuous)
    for cam_id in ("door", "wrong", "hash"):
        error = camera(beat, cam_id)["last_error"]
        assert f"{USER}:***@127.0.0.1:{server.port}/cam" in error, error
    logs = (tmp_path / "stderr").read_bytes() + (tmp_path / "stdout").read_bytes()
    assert f"{USER}:***@127.0.0.1".encode() in logs
    msgs = sub.messages
    assert beats(msgs)
    for password in (PASSWORD, HASH_PASSWORD):
        secret = password.encode()
        assert secret not in logs
        for m in msgs:
            assert password not in m.topic
            assert secret not in m.payload, (m.topic, m.payload[:500])
            assert all(password not in f"{k}={v}" for k, v in m.properties.items())


RETRY_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING \S+ agent\.capture\.thread: "
    r"door \(.*\): .*; retrying in (?P<delay>[\d.]+) s \(attempt (?P<attempt>\d+)\)$"
)


def retries(logs: Path) -> list[tuple[float, float, int]]:
    """(epoch seconds, announced delay, attempt) of each 'retrying' log line of camera door."""
    out = []
    for line in (logs / "stderr").read_text(errors="replace").splitlines():
        if m := RETRY_LINE.match(line):
            at = datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((at, float(m["delay"]), int(m["attempt"])))
    return out


def test_unreachable_camera_backs_off_and_the_agent_keeps_running(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Nothing listens on the camera's port: the agent stays up, the heartbeat says
    ``reconnecting`` with a growing ``reconnects`` and the error, and the delays between
    attempts grow (exponential backoff, not a tight loop)."""
    port = free_port()  # bound and released: nothing listens there
    source = f"rtsp://127.0.0.1:{port}/cam"
    config = write_config(tmp_path, broker.port, source=source, open_timeout_s=3, read_timeout_s=3)
    sub = Subscriber(broker.port, f"{BASE}/#")
    try:
        with running_agent(config, tmp_path) as proc:
            assert sub.wait_for(lambda ms: "online" in states(ms), 30), stderr_tail(tmp_path)
            # attempts 1-4 fail about 0, 1-2, 3-5 and 7-10 s after the start
            wait_beat(sub, lambda b: camera(b)["reconnects"] >= 3, since=0, timeout=25)
            deadline = time.monotonic() + 5
            while len(retries(tmp_path)) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert proc.poll() is None, stderr_tail(tmp_path)
            stop_agent(proc, tmp_path)
        assert sub.wait_for(lambda ms: states(ms)[-1:] == ["offline"], 10)
    finally:
        sub.close()

    cams = [camera(b) for b in beats(sub.messages)]
    failing = [c for c in cams if c["last_error"] is not None]
    assert failing
    assert all(c["state"] == "reconnecting" for c in failing), failing
    assert all(c["fps_in"] == 0 for c in cams)
    counts = [c["reconnects"] for c in cams]
    assert counts == sorted(counts)
    assert 3 <= counts[-1] <= 6, counts  # a tight loop would have made dozens
    for c in failing:
        assert c["last_error"].startswith(f"door (rtsp://127.0.0.1:{port}/cam)"), c
    # in the heartbeats alone: two waits (reconnects 1 -> 3) take 6-8 s, the first one 1-2 s
    seen_at = {
        n: next(b["ts"] for b in beats(sub.messages) if camera(b)["reconnects"] >= n)
        for n in (1, 3)
    }
    assert seen_at[3] - seen_at[1] >= 5, counts

    tries = retries(tmp_path)
    assert len(tries) >= 4, stderr_tail(tmp_path)
    assert [a for _, _, a in tries] == list(range(1, len(tries) + 1))
    delays = [d for _, d, _ in tries]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(tries)]
    print(
        f"unreachable camera: announced delays {delays} s, measured {[round(g, 2) for g in gaps]} s"
    )
    # the agent's schedule: min(2**(n-1), 30) s + jitter up to 1 s before attempt n+1
    # (announced to 0.1 s), so the delays double
    for n, delay in enumerate(delays, start=1):
        assert min(2 ** (n - 1), 30) - 0.05 <= delay <= min(2 ** (n - 1), 30) + 1.05, delays
    assert delays == sorted(delays)
    assert delays[3] > 2 * delays[0]
    # and it waits what it announced (an open of a closed port fails at once)
    for delay, gap in zip(delays, gaps, strict=False):
        assert delay - 0.06 <= gap <= delay + 2.0, (delays, gaps)
    assert gaps[2] > gaps[0] + 1.5
