"""Is the wall clock synchronised? Events and heartbeats say so, since a box without a
real-time clock boots in 1970 (or at its last shutdown time) until NTP has synced.

The kernel knows: ``adjtimex(2)`` returns ``TIME_ERROR`` (and sets ``STA_UNSYNC``) until a
time daemon (systemd-timesyncd, chrony, ntpd) has disciplined the clock. Where that call is
unavailable, systemd-timesyncd's flag file ``/run/systemd/timesync/synchronized`` is used.
``None`` means "cannot tell". The answer is cached for a few seconds (monotonic clock).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

TIME_ERROR = 5
STA_UNSYNC = 0x0040
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


class ClockSync(Protocol):
    """Whether the wall clock is synchronised (None: unknown)."""

    def synced(self) -> bool | None: ...


class _Timex(ctypes.Structure):
    """``struct timex`` from <sys/timex.h> (Linux, 64- and 32-bit: longs throughout)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


def synced_from_adjtimex(state: int, status: int) -> bool:
    """The kernel's answer: synchronised unless TIME_ERROR or STA_UNSYNC."""
    return state != TIME_ERROR and not status & STA_UNSYNC


def kernel_synced() -> bool | None:
    """Ask the kernel with a read-only ``adjtimex`` (modes 0); None if it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return synced_from_adjtimex(state, tx.status)


def timesyncd_synced(flag: Path = TIMESYNCD_FLAG) -> bool | None:
    """systemd-timesyncd's flag file: present once it has synchronised."""
    try:
        return flag.exists() or None
    except OSError:
        return None


class SystemClockSync:
    """The real :class:`ClockSync`: the kernel first, then timesyncd's flag, cached."""

    def __init__(
        self,
        *,
        cache_s: float = 10.0,
        probes: tuple[Callable[[], bool | None], ...] = (kernel_synced, timesyncd_synced),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache_s = cache_s
        self._probes = probes
        self._clock = clock
        self._at = float("-inf")
        self._value: bool | None = None

    def synced(self) -> bool | None:
        now = self._clock()
        if now - self._at >= self._cache_s:
            self._at = now
            previous, self._value = self._value, self._probe()
            if previous is not None and previous != self._value:
                log.info("wall clock synchronised: %s", self._value)
        return self._value

    def _probe(self) -> bool | None:
        """True if any probe says synchronised, else False if any says not, else None."""
        answers = [probe() for probe in self._probes]
        if any(answers):
            return True
        return False if False in answers else None
