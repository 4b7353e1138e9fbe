"""A real systemd-style notification socket for tests: ``AF_UNIX`` ``SOCK_DGRAM``, bound to a
path or to an abstract name, collecting ``KEY=VALUE`` assignments in arrival order."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path


class NotifySocket:
    """Binds ``path`` (or an abstract name when ``path`` is None); ``address`` is the value for
    ``$NOTIFY_SOCKET``. A thread receives datagrams until :meth:`close`."""

    def __init__(self, path: Path | None = None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"edge-agent-test-{uuid.uuid4().hex}"
            self._sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self._sock.bind(str(path))
            self.address = str(path)
        self._sock.settimeout(0.2)
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._closed = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self._lines.extend(data.decode("utf-8").split("\n"))
                self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._lines), timeout)

    def wait_line(self, match: Callable[[str], bool], after: int, timeout: float) -> int | None:
        """The index of the first line at or after ``after`` that matches, waiting for it."""

        def found() -> int | None:
            return next((i for i in range(after, len(self._lines)) if match(self._lines[i])), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            return found()

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._sock.close()
