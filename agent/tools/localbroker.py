"""A throwaway Mosquitto on 127.0.0.1 and a free port, for the demo and the tests."""

from __future__ import annotations

import contextlib
import os
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
        time.sleep(0.02)
    return False


class LocalBroker:
    """``mosquitto -c conf`` in a work folder, on a port that survives :meth:`restart`.

    ``conf_lines`` are appended to the minimal config (a loopback listener, anonymous
    clients allowed, no persistence unless the lines say otherwise). Stopped by pid.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        conf_lines: tuple[str, ...] = (),
        anonymous: bool = True,
    ) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edge-agent-broker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.conf_lines = conf_lines
        self.anonymous = anonymous
        self.log_path = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> list[str]:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # mosquitto would drop to its own user: keep our folders
        if not any(line.startswith("persistence ") for line in self.conf_lines):
            lines.append("persistence false")
        return lines + list(self.conf_lines)

    def start(self, timeout: float = 10.0) -> LocalBroker:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(self.config()) + "\n")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
                [find_mosquitto(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise AgentError(f"mosquitto exited on port {self.port}: {tail}")
            if wait_port(self.host, self.port, 0.2):
                return self
        self.stop()
        raise AgentError(f"mosquitto did not listen on port {self.port}; see {self.log_path}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; works on a frozen (SIGSTOPped) broker too."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
