"""A real RTSP camera for tests: gst-rtsp-server re-serving an H.264 clip at its own rate.

Run it with the *system* Python (it needs ``gi``, Debian ``python3-gi``,
``gir1.2-gst-rtsp-server-1.0``, ``gstreamer1.0-rtsp``, ``gstreamer1.0-plugins-{base,good,bad}``)::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --clip clip.mp4 [--user U --password P]

It serves ``rtsp://127.0.0.1:PORT/cam`` (shared media, so all clients see one stream) until
SIGTERM/SIGINT. The test side (:class:`RtspServer`) starts and stops it by pid. This file must
stay importable by the venv's Python (no ``gi`` at import time) and runnable by Python 3.10+.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
LAUNCH = (
    "( filesrc location={clip} ! qtdemux ! h264parse config-interval=-1 "
    "! rtph264pay name=pay0 pt=96 )"
)


def serve(port: int, clip: str, user: str | None, password: str | None) -> None:
    import gi  # type: ignore[import-not-found]  # noqa: PLC0415 - system Python only

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found]  # noqa: PLC0415

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH.format(clip=clip))
    factory.set_shared(True)
    if user is not None and password is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        role = "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        factory.add_role_from_structure(Gst.Structure.from_string(role)[0])
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"rtsp_server: cannot listen on 127.0.0.1:{port}")
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"rtsp_server: serving rtsp://127.0.0.1:{port}/cam", flush=True)
    loop.run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RtspServer:
    """Test-side handle: start, kill (a camera reboot), freeze/thaw (SIGSTOP/SIGCONT)."""

    def __init__(
        self,
        clip: Path,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.clip = clip
        self.port = port or free_port()
        self.user = user
        self.password = password
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        cred = f"{self.user}:{self.password}@" if self.user and self.password else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}/cam"

    def start(self, timeout_s: float = 10.0) -> None:
        argv = [SYSTEM_PYTHON, __file__, "--port", str(self.port), "--clip", str(self.clip)]
        if self.user and self.password:
            argv += ["--user", self.user, "--password", self.password]
        self.proc = proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        ready = select.select([proc.stdout], [], [], timeout_s)[0]
        line = proc.stdout.readline() if ready else ""  # "" when it died
        while "serving" not in line or not port_open(self.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"RTSP server did not come up on port {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (thawing it first) and reap it; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    serve(args.port, args.clip, args.user, args.password)


if __name__ == "__main__":
    main()
