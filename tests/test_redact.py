"""Credentials never reach logs: redact_url and RedactingFilter."""

from __future__ import annotations

import io
import logging

import pytest

from agent.capture.sources import describe
from agent.config import CameraConfig, known_secrets, load_settings
from agent.node.logs import setup_logging
from agent.node.redact import RedactingFilter, redact, redact_url, source_secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://user:pass@host/stream", "rtsp://user:***@host/stream"),
        (
            "rtsp://user:pass@10.0.0.5:554/Streaming/101",
            "rtsp://user:***@10.0.0.5:554/Streaming/101",
        ),
        ("rtsps://admin:s3cret@cam.local", "rtsps://admin:***@cam.local"),
        ("mqtt://node:pw@broker:1883", "mqtt://node:***@broker:1883"),
        ("mqtts://node:pw@broker:8883/", "mqtts://node:***@broker:8883/"),
        ("http://u:p@cam/video.mjpg", "http://u:***@cam/video.mjpg"),
        ("HTTPS://u:p@cam/x", "HTTPS://u:***@cam/x"),
        ("https://tok3n@api.example.org/v1", "https://***@api.example.org/v1"),
        ("rtsp://admin:p@ss@host/cam", "rtsp://admin:***@host/cam"),  # '@' in the password
        ("rtsp://admin:p:ss!x@host/cam", "rtsp://admin:***@host/cam"),
        ("rtsp://admin:@host/cam", "rtsp://admin:***@host/cam"),
        ("rtsp://admin:pa%40ss@host/cam", "rtsp://admin:***@host/cam"),
        ("rtsp://host:554/cam", "rtsp://host:554/cam"),
        ("rtsp://host/cam?x=1#y@z", "rtsp://host/cam?x=1#y@z"),  # '@' after the authority
        ("/srv/clips/street.mp4", "/srv/clips/street.mp4"),
        ("mail me: user@example.org", "mail me: user@example.org"),
        ("", ""),
        (
            "rtspsrc location=rtsp://u:p@h/cam latency=0 ! rtph264depay ! fakesink",
            "rtspsrc location=rtsp://u:***@h/cam latency=0 ! rtph264depay ! fakesink",
        ),
        (
            'rtspsrc location="rtsp://u:p w@h/cam" ! fakesink',  # quoted, with a space
            'rtspsrc location="rtsp://u:***@h/cam" ! fakesink',
        ),
        (
            "rtspsrc location=rtsp://h/cam user-id=admin user-pw=hunter2 ! fakesink",
            "rtspsrc location=rtsp://h/cam user-id=admin user-pw=*** ! fakesink",
        ),
        (
            'rtspsrc location=rtsp://h/cam user-pw="two words" ! fakesink',
            'rtspsrc location=rtsp://h/cam user-pw="***" ! fakesink',
        ),
        (
            "http://cam/snapshot.cgi?user=admin&pwd=hunter2&res=hd",
            "http://cam/snapshot.cgi?user=admin&pwd=***&res=hd",
        ),
        ("http://cam/api?token=abc123", "http://cam/api?token=***"),
        ("http://cam/api?api_key=abc123&x=1", "http://cam/api?api_key=***&x=1"),
        ("bypass=1 compass=2", "bypass=1 compass=2"),  # only whole key names
        (
            "cannot open rtsp://a:b@h1/x and mqtt://c:d@h2",
            "cannot open rtsp://a:***@h1/x and mqtt://c:***@h2",
        ),
        ("SourceError('rtsp://a:b@h/x')", "SourceError('rtsp://a:***@h/x')"),
    ],
)
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected
    assert redact_url(expected) == expected  # idempotent


def make_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


@pytest.mark.parametrize(
    ("msg", "args", "expected"),
    [
        ("open rtsp://u:pw@h/cam", (), "open rtsp://u:***@h/cam"),
        ("open %s", ("rtsp://u:pw@h/cam",), "open rtsp://u:***@h/cam"),
        ("%s: %s", ("cam", ValueError("mqtt://n:pw@b")), "cam: mqtt://n:***@b"),
        (
            "cam %(cam)s at %(url)s",
            ({"cam": "c1", "url": "rtsp://u:pw@h"},),
            "cam c1 at rtsp://u:***@h",
        ),
        ("nothing secret %d", (3,), "nothing secret 3"),
    ],
)
def test_filter_redacts_final_message(msg: str, args: tuple[object, ...], expected: str) -> None:
    logger, stream = make_logger("redact.test.msg")
    logger.warning(msg, *args)
    assert stream.getvalue() == f"WARNING {expected}\n"


def test_filter_redacts_exception_text_and_keeps_records() -> None:
    logger, stream = make_logger("redact.test.exc")
    try:
        raise ValueError("cannot open rtsp://admin:hunter2@cam/x")
    except ValueError:
        logger.exception("failed %s", "rtsp://admin:hunter2@cam/x")
    text = stream.getvalue()
    assert "hunter2" not in text
    assert "ValueError: cannot open rtsp://admin:***@cam/x" in text
    assert text.startswith("ERROR failed rtsp://admin:***@cam/x")


def test_filter_redacts_stack_info() -> None:
    logger, stream = make_logger("redact.test.stack")
    logger.info("rtsp://a:b@h", stack_info=True)
    assert "a:***@h" in stream.getvalue()


def test_filter_on_a_record_directly() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "to %s", ("mqtts://n:pw@b",), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "to mqtts://n:***@b"


@pytest.mark.parametrize(
    ("source", "secrets", "shown"),
    [
        ("rtsp://admin:pa#ss@10.0.0.1/cam", ["pa#ss"], "rtsp://admin:***@10.0.0.1/cam"),
        ("rtsp://admin:p/w?r d@cam:554/x", ["p/w?r d"], "rtsp://admin:***@cam:554/x"),
        ("rtsp://admin:p%40ss@cam/x", ["p%40ss", "p@ss"], "rtsp://admin:***@cam/x"),
        ("rtsp://admin@cam/x", [], "rtsp://***@cam/x"),
        ("rtsp://cam/x", [], "rtsp://cam/x"),
        ("/dev/video0", [], "/dev/video0"),
    ],
)
def test_configured_source_passwords_are_found_and_masked(source, secrets, shown):
    assert source_secrets(source) == secrets
    assert redact(source, source_secrets(source)) == shown
    cfg = CameraConfig(id="door", source=source)
    assert describe(cfg) == f"door ({shown})"


def test_filter_masks_known_secrets_anywhere(caplog):
    log = logging.getLogger("test.secrets")
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(RedactingFilter(["pa#ss", "mqtt-pw"]))
    log.addHandler(handler)
    try:
        log.warning("ffmpeg said: cannot open rtsp://admin:pa#ss@cam (auth with mqtt-pw)")
        try:
            raise ValueError("boom pa#ss")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    out = handler.stream.getvalue()
    assert "pa#ss" not in out
    assert "mqtt-pw" not in out
    assert out.count("***") >= 3


@pytest.mark.parametrize("from_files", [True, False])
def test_mqtt_and_tls_key_passwords_never_reach_the_logs(tmp_path, capsys, from_files):
    """The MQTT password and the TLS key password, inline or from their files, are among the
    secrets the agent's log filter masks, in messages and tracebacks alike."""
    mqtt_pw, key_pw = "mq-Pa55word", "k3y-Pa55word"
    (tmp_path / "mqtt.pw").write_text(f"{mqtt_pw}\n")
    (tmp_path / "key.pw").write_text(f"{key_pw}\n")
    tls: dict[str, object] = {"enabled": True, "cert_file": str(tmp_path / "node.crt")}
    mqtt: dict[str, object] = {"username": "node", "tls": tls}
    if from_files:
        mqtt["password_file"] = str(tmp_path / "mqtt.pw")
        tls["key_password_file"] = str(tmp_path / "key.pw")
    else:
        mqtt["password"] = mqtt_pw
        tls["key_password"] = key_pw
    settings = load_settings(None, node_id="n1", commune_id="c1", mqtt=mqtt,
                             cameras=[{"id": "door", "source": "0"}])  # fmt: skip
    assert {mqtt_pw, key_pw} <= set(known_secrets(settings))
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("INFO", secrets=known_secrets(settings))
        log = logging.getLogger("agent.test")
        log.warning("tls: cannot decrypt key with %s; mqtt said %s", key_pw, mqtt_pw)
        try:
            raise ValueError(f"bad password {mqtt_pw!r} / {key_pw!r}")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "cannot decrypt key with ***; mqtt said ***" in err
    assert "ValueError: bad password '***' / '***'" in err
    assert mqtt_pw not in err
    assert key_pw not in err
