"""A throwaway Mosquitto on 127.0.0.1 and a free port, for the demo and the tests."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from agent.errors import AgentError

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise AgentError("mosquitto not found: install it with 'apt-get install -y mosquitto'")


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class LocalBroker:
    """``mosquitto -c conf`` in a temporary folder; stopped by pid."""

    def __init__(self, port: int | None = None, extra_conf: str = "") -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.dir = Path(tempfile.mkdtemp(prefix="edge-agent-broker-"))
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> LocalBroker:
        self.conf.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
            f"log_dest file {self.log}\n{self.extra_conf}\n"
        )
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
            [find_mosquitto(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_port(self.host, self.port, timeout):
            self.stop()
            raise AgentError(f"mosquitto did not start on port {self.port}; see {self.log}")
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise AgentError("broker not started")
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
