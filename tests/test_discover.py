"""``edge-agent discover`` against a small ONVIF camera of our own (tests/onvif_responder.py):
WS-Discovery by multicast on loopback and by unicast, SOAP with a WS-Security digest checked
against the camera's own (skewed) clock, the real CLI in a subprocess."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import OnvifError
from agent.tools.onvif import parse_probe_matches, parse_xml, password_digest, probe_message
from tests.onvif_responder import FakeProfile, OnvifCamera

PASSWORD = "s3cret!pass"


def make_camera(**kw: object) -> OnvifCamera:
    name = f"test-{uuid.uuid4().hex[:8]}"  # a unique scope: other tests' cameras stay out
    defaults: dict[str, object] = {
        "user": "admin",
        "password": PASSWORD,
        "scopes": (f"onvif://www.onvif.org/name/{name}", "onvif://www.onvif.org/hardware/DS-2CD"),
        "profiles": (
            FakeProfile(
                "Profile_1", "mainStream", 1920, 1080, "rtsp://127.0.0.1:554/Streaming/Channels/101"
            ),
            # some cameras put the credentials in the URI: they must not be printed
            FakeProfile(
                "Profile_2",
                "subStream",
                640,
                360,
                f"rtsp://admin:{PASSWORD}@127.0.0.1:554/Streaming/Channels/102",
            ),
        ),
        "clock_skew_s": 2 * 3600.0,  # never synced: the digest must use the camera's clock
    }
    defaults.update(kw)
    return OnvifCamera(**defaults).start()  # type: ignore[arg-type]


@pytest.fixture
def camera() -> Iterator[OnvifCamera]:
    cam = make_camera()
    try:
        yield cam
    finally:
        cam.stop()


@pytest.fixture
def unicast_camera() -> Iterator[OnvifCamera]:
    cam = make_camera(multicast=False)
    try:
        yield cam
    finally:
        cam.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "camera-password"
    path.write_text(PASSWORD + "\n")
    return path


def discover(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "discover", "--timeout", "1.5", *args],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_multicast_discovery_prints_each_profile_with_its_rtsp_uri(camera, password_file):
    run = discover("--interface", "127.0.0.1", "--scope", camera.scopes[0],
                   "--user", "admin", "--password-file", str(password_file))  # fmt: skip
    assert run.returncode == 0, run.stderr
    name = camera.scopes[0].rsplit("/", 1)[1]
    assert run.stdout.splitlines() == [
        f"127.0.0.1  {name}  mainStream (H264 1920x1080)  "
        "rtsp://127.0.0.1:554/Streaming/Channels/101",
        f"127.0.0.1  {name}  subStream (H264 640x360)  "
        "rtsp://admin:***@127.0.0.1:554/Streaming/Channels/102",
    ]
    assert PASSWORD not in run.stdout + run.stderr
    # every call but the clock query was authenticated, and the camera accepted the digest
    assert [(c.action, c.authorized) for c in camera.calls] == [
        ("GetSystemDateAndTime", True), ("GetCapabilities", True), ("GetProfiles", True),
        ("GetStreamUri", True), ("GetStreamUri", True),
    ]  # fmt: skip
    # the media calls went to the media service the device announced
    assert {c.path for c in camera.calls[2:]} == {"/onvif/media"}


def test_unicast_probe_with_json_output(unicast_camera, password_file):
    run = discover("--address", f"127.0.0.1:{unicast_camera.udp_port}", "--json",
                   "--user", "admin", "--password-file", str(password_file))  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["profile"], r["width"], r["height"], r["encoding"]) for r in rows] == [
        ("Profile_1", 1920, 1080, "H264"), ("Profile_2", 640, 360, "H264"),
    ]  # fmt: skip
    assert {r["endpoint"] for r in rows} == {unicast_camera.endpoint}
    assert {r["hardware"] for r in rows} == {"DS-2CD"}
    assert rows[0]["rtsp_uri"] == "rtsp://127.0.0.1:554/Streaming/Channels/101"
    assert PASSWORD not in run.stdout + run.stderr


def test_device_url_skips_discovery(unicast_camera, password_file):
    run = discover("--device", unicast_camera.xaddr,
                   "--user", "admin", "--password-file", str(password_file))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 2


def test_wrong_password_is_reported_without_printing_it(unicast_camera, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    run = discover("--address", f"127.0.0.1:{unicast_camera.udp_port}",
                   "--user", "admin", "--password-file", str(wrong))  # fmt: skip
    assert run.returncode == 1
    assert run.stdout == ""
    assert "127.0.0.1: GetCapabilities: not authorized" in run.stderr
    assert "check --user and the password" in run.stderr
    assert "not-the-password" not in run.stderr


def test_without_credentials_the_camera_asks_for_them(unicast_camera):
    run = discover("--address", f"127.0.0.1:{unicast_camera.udp_port}")
    assert run.returncode == 1
    assert "not authorized" in run.stderr
    assert "give --user" in run.stderr


def test_no_answer_exits_one(unicast_camera):
    port = unicast_camera.udp_port
    unicast_camera.stop()  # nobody listens there any more
    run = discover("--address", f"127.0.0.1:{port}")
    assert run.returncode == 1
    assert "no ONVIF camera answered within 1.5 s" in run.stderr


def test_an_address_not_on_this_host_is_a_clear_error():
    run = discover("--interface", "192.0.2.1")  # TEST-NET-1: not ours
    assert run.returncode == 1
    assert "cannot send the discovery probe to 239.255.255.250" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "admin"], "--password-file: no terminal to ask for the password"),
        (["--password-file", "/nonexistent"], "--password-file: give --user too"),
        (["--user", "a", "--password-file", "/nonexistent/pw"], "--password-file: cannot read"),
        (["--interface", "nosuch0"], "--interface: no interface or IPv4 address 'nosuch0'"),
        (["--address", "10.0.0.1:99999"], "--address: expected HOST or HOST:PORT"),
    ],
)
def test_usage_errors_exit_two(args, message):
    run = discover(*args)
    assert run.returncode == 2
    assert message in run.stderr


def test_password_digest_matches_the_onvif_programmers_guide():
    nonce = base64.b64decode("LKqI6G/AikKCQrN0zqZFlg==")
    digest = password_digest(nonce, "2010-09-16T07:50:45Z", "userpassword")
    assert digest == "tuOSpGlFlIXsozq4HFNeeGeFLEI="


def test_probe_replies_to_someone_else_are_ignored():
    cam = OnvifCamera("u", "p", ("onvif://www.onvif.org/name/x",), ())
    cam.http_port = 80
    reply = cam.probe_match(probe_message("urn:uuid:theirs"))
    assert reply is not None
    assert parse_probe_matches(reply, "urn:uuid:mine") == []
    (dev,) = parse_probe_matches(reply, "urn:uuid:theirs")
    assert dev.xaddr == "http://127.0.0.1:80/onvif/device_service"  # IPv4 before link-local
    assert dev.name == "x"


def test_replies_with_a_dtd_are_refused():
    bomb = b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><a>&lol;</a>'
    with pytest.raises(OnvifError, match="DTD"):
        parse_xml(bomb, "probe reply")
