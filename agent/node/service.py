"""The agent as a systemd ``Type=notify`` service: READY, STATUS, WATCHDOG, STOPPING.

:class:`Supervisor` runs (only when ``$NOTIFY_SOCKET`` is set) a notifying thread that, every
half ``WatchdogSec`` (or every ``status_every_s`` without a watchdog):

- sends ``READY=1`` once, when every owned thread has ticked its :class:`~agent.node.liveness.Beat`
  at least once (the pipeline runs);
- sends ``STATUS=<one line>`` when the line changed (cameras online, outbox depth, MQTT link,
  and the names of stalled threads);
- sends ``WATCHDOG=1`` only while :meth:`Liveness.check` is healthy: a hung camera worker,
  capture read or publisher withholds the ping and systemd restarts the agent. An unreachable
  broker or an offline camera does not: their threads keep looping (reconnecting).

The notifying thread reads only the beats and a cached status text: it never calls into the
components it judges, so a component hung while holding a lock cannot silence the verdict
(the log line and ``STATUS=...; stalled: ...``). A second thread refreshes the cached text
with ``describe()``, which may block on such a lock.

:meth:`Supervisor.stopping` stops the notifying thread and sends ``STOPPING=1``. A thread
counts as stalled after its declared wait plus a grace of one ``WatchdogSec``
(``default_grace_s`` without a watchdog).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.node.liveness import Liveness, LivenessStats
from agent.node.systemd import Notifier, SdNotifier, status_text, watchdog_interval_s

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 30.0


def status_line(
    cameras: Sequence[tuple[str, str]],
    outbox_depth: int,
    mqtt_connected: bool,
    stalled: Sequence[str] = (),
    *,
    max_named: int = 3,
) -> str:
    """The one-line state for ``STATUS=`` (pure): ``cameras`` as ``(id, state)`` pairs.

    >>> status_line([("door", "online"), ("gate", "reconnecting")], 3, True)
    '1/2 cameras online (gate reconnecting), outbox 3, mqtt connected'
    """
    online = sum(state == "online" for _, state in cameras)
    noun = "camera" if len(cameras) == 1 else "cameras"
    text = f"{online}/{len(cameras)} {noun} online"
    off = [f"{cam} {state}" for cam, state in cameras if state != "online"]
    if off:
        more = f", +{len(off) - max_named} more" if len(off) > max_named else ""
        text += f" ({', '.join(off[:max_named])}{more})"
    text += f", outbox {outbox_depth}, mqtt {'connected' if mqtt_connected else 'disconnected'}"
    if stalled:
        text += f"; stalled: {', '.join(stalled)}"
    return status_text(text)


@dataclass(frozen=True, slots=True)
class SupervisorStats:
    """``pings`` sent; ``withheld`` pings skipped because a thread stalled or died."""

    ready: bool
    pings: int
    withheld: int
    status: str | None
    stalled: tuple[str, ...]
    watchdog_s: float | None


class Supervisor:
    """Tells systemd how the agent is doing; see the module docstring."""

    def __init__(
        self,
        notifier: Notifier,
        liveness: Liveness,
        describe: Callable[[], str],
        *,
        watchdog_s: float | None,
        status_every_s: float = 5.0,
    ) -> None:
        self.notifier = notifier
        self.liveness = liveness
        self._describe = describe
        self._watchdog_s = watchdog_s
        self._status_every_s = status_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = False
        self._base = "state not known yet"  # the latest describe(), from the status thread
        self._status: str | None = None
        self._stalled: tuple[str, ...] = ()
        self._pings = 0
        self._withheld = 0

    @classmethod
    def from_env(
        cls,
        describe: Callable[[], str],
        environ: Mapping[str, str] | None = None,
        *,
        default_grace_s: float = DEFAULT_GRACE_S,
    ) -> Supervisor:
        """The supervisor for this process: ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``/``_PID``."""
        env = os.environ if environ is None else environ
        watchdog_s = watchdog_interval_s(env, os.getpid())
        liveness = Liveness(grace_s=watchdog_s or default_grace_s)
        return cls(SdNotifier.from_env(env), liveness, describe, watchdog_s=watchdog_s)

    @property
    def period_s(self) -> float:
        """Seconds between two steps once ready: half ``WatchdogSec``, as systemd advises."""
        if self._watchdog_s is None:
            return self._status_every_s
        return self._watchdog_s / 2

    def start(self) -> None:
        """Start the notifying and status threads (not under systemd: nothing to do)."""
        if self.notifier.enabled and self._thread is None:
            status = threading.Thread(target=self._refresh_loop, name="systemd-status", daemon=True)
            status.start()  # never joined: it may be stuck behind a hung component
            self._thread = threading.Thread(target=self._run, name="systemd-notify", daemon=True)
            self._thread.start()

    def stopping(self, timeout: float = 5.0) -> None:
        """Shutdown begins: no more pings, then ``STOPPING=1``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.notifier.enabled:
            self.notifier.notify("STOPPING=1\nSTATUS=stopping: ending events, draining the outbox")

    def stats(self) -> SupervisorStats:
        return SupervisorStats(
            ready=self._ready,
            pings=self._pings,
            withheld=self._withheld,
            status=self._status,
            stalled=self._stalled,
            watchdog_s=self._watchdog_s,
        )

    def refresh(self) -> None:
        """Refresh the cached status text (the status thread; may block on a component)."""
        try:
            self._base = self._describe()
        except Exception:  # the status is a nicety: never let it break the thread
            log.exception("cannot describe the agent's state")
            self._base = "state unknown"

    def step(self) -> None:
        """One round: READY once started, STATUS on change, WATCHDOG while healthy.

        Reads only the beats and the cached status text: it cannot block on a component."""
        check = self.liveness.check()
        self._note_stalls(check)
        lines: list[str] = []
        if not self._ready and check.started:
            self._ready = True
            lines.append("READY=1")
        status = self._status_now(check)
        if status != self._status:
            self._status = status
            lines.append(f"STATUS={status}")
        if self._ready and self._watchdog_s is not None:
            if check.healthy:
                self._pings += 1
                lines.append("WATCHDOG=1")
            else:
                self._withheld += 1
        if lines:
            self.notifier.notify("\n".join(lines))

    def _status_now(self, check: LivenessStats) -> str:
        base = self._base
        if check.stalled:
            base += f"; stalled: {', '.join(check.stalled)}"
        elif not check.started:
            base = f"starting; {base}"
        return status_text(base)

    def _note_stalls(self, check: LivenessStats) -> None:
        if check.stalled == self._stalled:
            return
        if check.stalled:
            silent = {b.name: b.silent_s for b in check.beats}
            names = ", ".join(f"{n} ({silent[n]} s)" for n in check.stalled)
            action = "withholding the watchdog ping" if self._watchdog_s else "no watchdog set"
            log.error("no progress from %s: %s", names, action)
        else:
            log.info("every thread is making progress again")
        self._stalled = check.stalled

    def _run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # thread top: log and go on (a dead thread would stop the pings)
                log.exception("systemd notification failed")
            if self._stop.wait(self.period_s if self._ready else min(0.1, self.period_s)):
                return

    def _refresh_loop(self) -> None:
        self.refresh()
        while not self._stop.wait(min(self.period_s, self._status_every_s)):
            self.refresh()
