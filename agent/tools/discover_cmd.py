"""``edge-agent discover``: ONVIF cameras on the local network and their RTSP URIs."""

from __future__ import annotations

import dataclasses
import getpass
import ipaddress
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import psutil

from agent.errors import ConfigError, OnvifError
from agent.tools.onvif import (
    DISCOVERY_PORT,
    CameraStream,
    Credentials,
    Device,
    discover,
    query_device,
)


def resolve_interface(value: str) -> str:
    """An IPv4 address as given, or the first IPv4 address of the interface named ``value``."""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        pass
    addrs = psutil.net_if_addrs().get(value)
    if addrs is None:
        raise ConfigError([("--interface", f"no interface or IPv4 address {value!r}")])
    for addr in addrs:
        if addr.family == socket.AF_INET:
            return str(addr.address)
    raise ConfigError([("--interface", f"interface {value!r} has no IPv4 address")])


def parse_address(value: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (default port 3702) for a unicast probe."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, DISCOVERY_PORT
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConfigError([("--address", f"expected HOST or HOST:PORT, got {value!r}")])
    return host, int(port)


def read_credentials(
    user: str | None, password_file: Path | None, stdin: TextIO | None = None
) -> Credentials | None:
    """The camera credentials: the password from its file, else asked for on a terminal."""
    if user is None:
        if password_file is not None:
            raise ConfigError([("--password-file", "give --user too")])
        return None
    if password_file is not None:
        try:
            return Credentials(user, password_file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError([("--password-file", f"cannot read: {exc.strerror}")]) from exc
    if not (stdin or sys.stdin).isatty():
        raise ConfigError([("--password-file", "no terminal to ask for the password: give a file")])
    return Credentials(user, getpass.getpass(f"ONVIF password for {user}: "))


def format_line(cam: CameraStream) -> str:
    size = f" {cam.width}x{cam.height}" if cam.width and cam.height else ""
    video = f" ({cam.encoding or '?'}{size})"
    name = cam.name or cam.hardware or "-"
    return f"{cam.host}  {name}  {cam.profile_name}{video}  {cam.rtsp_uri}"


def run_discover(
    *,
    timeout: float,
    interface: str | None,
    address: str | None,
    devices: Sequence[str],
    scopes: Sequence[str],
    creds: Credentials | None,
    as_json: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    """Print one line per camera profile; 0 if every camera found was listed, else 1."""
    if devices:
        found = [Device(f"url:{url}", (url,), ()) for url in devices]
    else:
        found = discover(
            timeout=timeout,
            interface=resolve_interface(interface) if interface else None,
            address=parse_address(address) if address else None,
            scopes=scopes,
        )
    if not found:
        print(f"no ONVIF camera answered within {timeout:g} s", file=err)
        return 1
    failed = 0
    for dev in found:
        try:
            streams = query_device(dev, creds, timeout=timeout)
        except OnvifError as exc:
            failed += 1
            print(str(exc), file=err)
            continue
        for cam in streams:
            line = json.dumps(dataclasses.asdict(cam)) if as_json else format_line(cam)
            print(line, file=out, flush=True)
    return 1 if failed else 0
