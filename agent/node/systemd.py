"""The systemd notify protocol, written by hand (no library): one datagram per message.

systemd gives a ``Type=notify`` service the address of its notification socket in
``$NOTIFY_SOCKET``: a file system path (``/run/systemd/notify``) or an abstract socket name
written with a leading ``@``. A message is newline-separated ``KEY=VALUE`` assignments
(``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``) sent as one ``AF_UNIX``
``SOCK_DGRAM`` datagram. ``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID``, when set, naming the
process meant) is the unit's ``WatchdogSec``: a service that pings less often is killed.

Without ``$NOTIFY_SOCKET`` (not under systemd) every send is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """Where service-manager notifications go."""

    @property
    def enabled(self) -> bool:
        """Whether anyone listens (False: every :meth:`notify` is a no-op)."""
        ...

    def notify(self, message: str) -> bool:
        """Send ``KEY=VALUE`` lines as one message; True if it was sent."""
        ...


def notify_address(value: str | None) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET`` (abstract ``@name`` -> ``\\0name``); None
    when unset or of a kind we do not speak (e.g. ``vsock:``)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """``WatchdogSec`` in seconds from ``$WATCHDOG_USEC``; None when unset, invalid, zero, or
    meant for another process (``$WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    wpid = environ.get("WATCHDOG_PID", "")
    try:
        if wpid and int(wpid) != pid:
            return None
        value = int(usec)
    except ValueError:
        log.warning("ignoring the watchdog: WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, wpid)
        return None
    return value / 1e6 if value > 0 else None


def status_text(line: str) -> str:
    """A ``STATUS=`` value: one line (newlines would start new assignments)."""
    return " ".join(line.split())


class SdNotifier:
    """The real :class:`Notifier`: datagrams to ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SdNotifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        address = notify_address(raw)
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name: not notifying", raw)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> bool:
        if self._address is None:
            return False
        data = message.encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._failed:  # once: the manager may be gone (e.g. shutting down)
                    log.warning("cannot notify systemd (%s): %s", message.partition("=")[0], exc)
                self._failed = True
                return False
            self._failed = False
            return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
