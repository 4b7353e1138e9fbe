"""The agent as a systemd ``Type=notify`` service, end to end: the real ``edge-agent run``
subprocess, a real Mosquitto, real footage and model, and a notification socket of our own in
place of systemd's (``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.tools.localbroker import free_port
from tests.conftest import MEDIA, MODELS
from tests.mqtt_support import Mosquitto
from tests.notify_support import NotifySocket

CLIP = MEDIA / "one-by-one-person-detection.mp4"
WATCHDOG_S = 2.0  # pings every 1 s; a thread is stalled after its declared wait + 2 s


def write_config(tmp_path: Path, port: int, **camera: object) -> Path:
    cam = {"id": "door", "source": str(CLIP), "detect_fps": 5, **camera}
    cfg = {
        "node_id": "node-1",
        "commune_id": "test-commune",
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 5, "reconnect_max_s": 2},
        "cameras": [cam],
        "detector": {"model": str(MODELS / "yolox_nano_416.onnx"), "threads": 1},
        "outbox": {"path": str(tmp_path / "data" / "outbox.db")},
        "heartbeat": {"interval_s": 1},
        "shutdown": {"drain_timeout_s": 2},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def start_agent(config: Path, sock: NotifySocket, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=sock.address, WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)))
    env.pop("WATCHDOG_PID", None)
    with log.open("wb") as err:  # a file, not a pipe nobody reads: a full pipe would hang it
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            stderr=err, env=env,
        )  # fmt: skip


def stop_agent(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def indices(lines: list[str], line: str) -> list[int]:
    return [i for i, x in enumerate(lines) if x == line]


@pytest.mark.slow
def test_ready_status_pings_through_a_frozen_broker_then_stopping(tmp_path, broker: Mosquitto):
    """Abstract socket. A frozen broker is the network's problem, not a hung agent: the link
    notices, STATUS says so, and the pings go on (restarting would not help)."""
    sock = NotifySocket()  # abstract name: NOTIFY_SOCKET=@...
    config = write_config(tmp_path, broker.port, realtime=True, loop=True)
    proc = start_agent(config, sock, tmp_path / "agent.log")
    try:
        assert sock.wait_for(lambda ls: "READY=1" in ls, 60), (tmp_path / "agent.log").read_text()
        ready = sock.lines.index("READY=1")
        up = sock.wait_line(lambda s: s.startswith("STATUS=1/1 camera online, outbox"), 0, 30)
        assert up is not None, sock.lines
        assert "mqtt connected" in sock.lines[up]
        assert sock.wait_line(lambda s: s == "WATCHDOG=1", ready, 10) is not None

        broker.freeze()
        try:
            down = sock.wait_line(lambda s: "mqtt disconnected" in s, up, 30)
            assert down is not None, sock.lines
            assert sock.wait_for(lambda ls: len(indices(ls[down:], "WATCHDOG=1")) >= 3, 15)
        finally:
            broker.thaw()
        assert sock.wait_line(lambda s: "mqtt connected" in s, down, 30) is not None
        assert stop_agent(proc) == 0
    finally:
        proc.kill()
        proc.wait()
        sock.close()
    lines = sock.lines
    assert lines.count("READY=1") == 1
    assert min(indices(lines, "WATCHDOG=1")) > ready  # no ping before the pipeline runs
    stopping = lines.index("STOPPING=1")
    assert stopping > max(indices(lines, "WATCHDOG=1"))  # no ping once stopping
    assert all(line.startswith(("READY=", "STATUS=", "WATCHDOG=", "STOPPING=")) for line in lines)


def y4m_header(w: int, h: int) -> bytes:
    return f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode()


def y4m_frame(w: int, h: int, luma: int) -> bytes:
    return b"FRAME\n" + bytes([luma]) * (w * h) + bytes([128]) * (w * h // 2)


@pytest.fixture
def fifo_camera(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """A camera whose stream can stop dead: a FIFO fed with y4m frames at 10 fps by a thread
    until the event is set. FFmpeg's file protocol then blocks in read(2) for good, whatever
    the read timeout: the capture thread is truly stuck (as with a hung driver or NFS)."""
    fifo = tmp_path / "camera.y4m"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # we hold both ends: no EOF, no open wait
    stop = threading.Event()
    w, h = 160, 120

    def feed() -> None:
        os.write(fd, y4m_header(w, h))
        n = 0
        while not stop.wait(0.1):  # whole frames (a pipe takes 64 KiB; the agent keeps up)
            os.write(fd, y4m_frame(w, h, 40 + n % 100))
            n += 1

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield fifo, stop
    finally:
        stop.set()
        thread.join(2)
        os.close(fd)  # EOF for the reader: a stuck read returns


@pytest.mark.slow
def test_a_stuck_capture_read_withholds_the_watchdog_ping(tmp_path, broker, fifo_camera):
    """Path socket. A read that never returns stops the pings (systemd would restart us)
    and STATUS names the stuck thread."""
    fifo, stop_feed = fifo_camera
    sock = NotifySocket(tmp_path / "notify.sock")
    config = write_config(
        tmp_path, broker.port, id="fifo", source=f"file://{fifo}", detect_fps=2,
        read_timeout_s=1, open_timeout_s=1,
    )  # fmt: skip
    proc = start_agent(config, sock, tmp_path / "agent.log")
    try:
        assert sock.wait_for(lambda ls: "READY=1" in ls, 60), (tmp_path / "agent.log").read_text()
        ready = sock.lines.index("READY=1")
        assert sock.wait_for(lambda ls: len(indices(ls[ready:], "WATCHDOG=1")) >= 2, 15)
        assert sock.wait_line(lambda s: s.startswith("STATUS=1/1 camera online"), 0, 10)

        stop_feed.set()  # the camera's stream stops dead: the capture blocks in read()
        stalled = sock.wait_line(lambda s: "stalled: capture-fifo" in s, ready, 30)
        assert stalled is not None, sock.lines
        assert sock.lines[stalled].startswith("STATUS=0/1 camera online (fifo reconnecting)")
        # four ping periods: pings would have shown up by now
        assert not sock.wait_for(lambda ls: "WATCHDOG=1" in ls[stalled:], 4 * WATCHDOG_S / 2)
        assert stop_agent(proc) == 0
    finally:
        proc.kill()
        proc.wait()
        sock.close()
    assert "WATCHDOG=1" not in sock.lines[stalled:]
    assert "STOPPING=1" in sock.lines[stalled:]
    log = (tmp_path / "agent.log").read_text()
    assert "no progress from capture-fifo" in log


class Disk:
    """A small ext4 filesystem of our own, loop-mounted, that can be frozen (``fsfreeze``):
    every write to it blocks until thawed, as on a dying SD card."""

    def __init__(self, work: Path) -> None:
        self.image, self.mount = work / "disk.img", work / "disk"
        self.mount.mkdir()
        with self.image.open("wb") as f:
            f.truncate(64 * 1024 * 1024)
        for cmd in (["mkfs.ext4", "-q", "-F", str(self.image)],
                    ["mount", "-o", "loop", str(self.image), str(self.mount)]):  # fmt: skip
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                pytest.skip(f"cannot make a loop-mounted disk here: {run.stderr.strip()}")

    def freeze(self) -> None:
        subprocess.run(["fsfreeze", "-f", str(self.mount)], check=True)

    def thaw(self) -> None:
        subprocess.run(["fsfreeze", "-u", str(self.mount)], capture_output=True, check=False)

    def remove(self) -> None:
        self.thaw()
        if subprocess.run(["umount", str(self.mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(self.mount)], check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0 or not all(map(shutil.which, ("mkfs.ext4", "fsfreeze", "mount"))):
        pytest.skip("needs root, mkfs.ext4, mount and fsfreeze")
    d = Disk(tmp_path)
    try:
        yield d
    finally:
        d.remove()  # thaw first: a process blocked on the frozen disk cannot even be killed


@pytest.mark.slow
def test_a_worker_stuck_on_a_frozen_disk_withholds_pings_until_it_moves(tmp_path, broker, disk):
    """The outbox's disk stops taking writes: the camera worker (and whoever waits on the
    outbox) stops making progress, pings stop; when the disk comes back, they resume."""
    sock = NotifySocket(tmp_path / "notify.sock")
    config = write_config(tmp_path, broker.port, realtime=False, loop=True)
    cfg = json.loads(config.read_text())
    cfg["outbox"]["path"] = str(disk.mount / "data" / "outbox.db")
    config.write_text(json.dumps(cfg))
    proc = start_agent(config, sock, tmp_path / "agent.log")
    try:
        assert sock.wait_for(lambda ls: "READY=1" in ls, 60), (tmp_path / "agent.log").read_text()
        ready = sock.lines.index("READY=1")
        assert sock.wait_for(lambda ls: len(indices(ls[ready:], "WATCHDOG=1")) >= 2, 15)

        disk.freeze()
        try:
            stalled = sock.wait_line(lambda s: "stalled:" in s and "worker-door" in s, ready, 60)
            assert stalled is not None, sock.lines
            # four ping periods: pings would have shown up by now
            assert not sock.wait_for(lambda ls: "WATCHDOG=1" in ls[stalled:], 4 * WATCHDOG_S / 2)
        finally:
            disk.thaw()
        moving = sock.wait_line(lambda s: s.startswith("STATUS=") and "stalled" not in s,
                                stalled, 30)  # fmt: skip
        assert moving is not None, sock.lines
        assert sock.wait_line(lambda s: s == "WATCHDOG=1", moving, 10) is not None
        assert stop_agent(proc) == 0
    finally:
        disk.thaw()
        proc.kill()
        proc.wait()
        sock.close()
    lines = sock.lines
    assert "WATCHDOG=1" not in lines[stalled:moving]
    log = (tmp_path / "agent.log").read_text()
    assert "no progress from" in log
    assert "every thread is making progress again" in log


def test_ready_and_pings_without_a_broker(tmp_path):
    """A box that boots while the commune broker is unreachable must still come up (and
    queue its events): READY and the pings do not wait for MQTT."""
    sock = NotifySocket()
    config = write_config(tmp_path, free_port(), realtime=True, loop=True)
    proc = start_agent(config, sock, tmp_path / "agent.log")
    try:
        assert sock.wait_for(lambda ls: "READY=1" in ls, 60), (tmp_path / "agent.log").read_text()
        ready = sock.lines.index("READY=1")
        assert sock.wait_for(lambda ls: len(indices(ls[ready:], "WATCHDOG=1")) >= 2, 15)
        assert stop_agent(proc) == 0
    finally:
        proc.kill()
        proc.wait()
        sock.close()
    statuses = [s for s in sock.lines if s.startswith("STATUS=") and "camera" in s]
    assert statuses
    assert all("mqtt disconnected" in s for s in statuses)
