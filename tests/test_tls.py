"""TLS and mutual TLS against a real Mosquitto with a TLS listener.

Every certificate is made here (tests/tls_support.py), never committed. The broker's
certificate carries only ``broker.xuan-dinh.lan``: the agent reaches it at 127.0.0.1 and pins
that name with ``server_name``. With ``require_certificate`` and ``use_identity_as_username``
a node's user name is its certificate's CN, and the ACL lets a node write only under its own
``camnet/<commune>/<node>/#``.
"""

from __future__ import annotations

import json
import logging
import select
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from agent.cli import _parser, main, tail_mqtt_config
from agent.config import MqttConfig, OutboxConfig, TlsConfig
from agent.contract import Topics
from agent.delivery.mqtt_link import MqttLink
from agent.delivery.outbox import Outbox, OutMessage
from agent.delivery.publisher import Publisher
from agent.delivery.tls import build_context
from agent.errors import ConfigError
from agent.tools.tail import Tail
from tests.conftest import MODELS
from tests.mqtt_support import BrokerTls, DeliveryAgent, Mosquitto, Subscriber
from tests.polling import wait_until
from tests.tls_support import BROKER_NAME, Ca, Issued

COMMUNE, NODE = "c1", "n1"
BASE = f"camnet/{COMMUNE}/{NODE}"
TOPICS = Topics("camnet", COMMUNE, NODE)
OFFLINE = b'{"state":"offline"}'
ACL = f"""user commune-server
topic read camnet/#

pattern write camnet/{COMMUNE}/%u/#
"""


def online() -> bytes:
    return json.dumps({"state": "online", "ts": time.time()}).encode()


@dataclass(frozen=True)
class Pki:
    ca: Ca
    other_ca: Ca  # a CA the broker does not trust, and that did not sign the broker
    broker: Issued  # broker.xuan-dinh.lan only
    node: Issued  # CN n1
    server: Issued  # CN commune-server: the subscriber

    def tls(self, client: Issued | None = None, **kw: Any) -> TlsConfig:
        """The agent's TLS section: our CA, the pinned broker name, ``client``'s cert."""
        files = {"cert_file": client.cert, "key_file": client.key} if client else {}
        return TlsConfig(**{"enabled": True, "ca_file": self.ca.cert,
                            "server_name": BROKER_NAME, **files, **kw})  # fmt: skip


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Ca(tmp_path / "pki")
    return Pki(
        ca=ca,
        other_ca=Ca(tmp_path / "other-pki", "other-ca"),
        broker=ca.issue(BROKER_NAME, dns=(BROKER_NAME,), server=True),
        node=ca.issue(NODE),
        server=ca.issue("commune-server"),
    )


def mtls_broker(
    folder: Path, pki: Pki, broker_cert: Issued | None = None, *, persistent: bool = False
) -> Mosquitto:
    cert = broker_cert or pki.broker
    tls = BrokerTls(pki.ca.cert, cert.cert, cert.key, require_certificate=True,
                    use_identity_as_username=True)  # fmt: skip
    return Mosquitto(folder, tls=tls, acl=ACL, anonymous=False, persistent=persistent)


@pytest.fixture
def broker_mtls(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    b = mtls_broker(tmp_path / "broker", pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def subscriber(port: int, pki: Pki, topic: str = "camnet/#") -> Subscriber:
    """The commune server: a real client over mutual TLS, with the agent's own TLS code."""
    return Subscriber(port, topic, tls=build_context(pki.tls(pki.server)))


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., DeliveryAgent]]:
    """The agent's delivery path (outbox -> publisher -> link) with a given mqtt section."""
    made: list[DeliveryAgent] = []

    def make(port: int, *, outbox: str = "outbox.db", **mqtt: Any) -> DeliveryAgent:
        cfg = MqttConfig(port=port, reconnect_min_s=0.05, reconnect_max_s=0.3, **mqtt)
        box = Outbox.open(OutboxConfig(path=tmp_path / outbox))
        link = MqttLink(cfg, BASE, f"edge-{NODE}", OFFLINE, online)
        agent = DeliveryAgent(box, link, Publisher(box, link, cfg, TOPICS), BASE, OFFLINE)
        link.start()
        agent.publisher.start()
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()


def event_ids(sub: Subscriber) -> list[str]:
    return [json.loads(m.payload)["id"] for m in sub.messages if m.topic == f"{BASE}/events"]


def warnings_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- the context itself: bad material is a ConfigError naming the field ------------------------


def junk(path: Path, text: str = "not a certificate\n") -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("case", "field", "reason"),
    [
        ("ca missing", "mqtt.tls.ca_file", "cannot read"),
        ("ca junk", "mqtt.tls.ca_file", "no PEM certificate"),
        ("cert junk", "mqtt.tls.cert_file", "no PEM certificate"),
        ("cert missing", "mqtt.tls.cert_file", "cannot read"),
        ("key is a cert", "mqtt.tls.key_file", "no PEM private key"),
        ("key of another cert", "mqtt.tls.key_file", "does not match the certificate"),
        ("encrypted key, no password", "mqtt.tls.key_file", "encrypted"),
        ("wrong password in file", "mqtt.tls.key_password_file", "wrong password"),
        ("wrong password inline", "mqtt.tls.key_password", "wrong password"),
        ("password file missing", "mqtt.tls.key_password_file", "cannot read"),
    ],
)
def test_bad_tls_material_names_the_field(tmp_path, pki, case, field, reason):
    locked = pki.ca.issue("n9", key_password="right horse")
    (tmp_path / "pw-wrong").write_text("battery staple\n")
    tls = {
        "ca missing": pki.tls(pki.node, ca_file=tmp_path / "nope.crt"),
        "ca junk": pki.tls(pki.node, ca_file=junk(tmp_path / "ca.crt")),
        "cert junk": pki.tls(cert_file=junk(tmp_path / "c.crt"), key_file=pki.node.key),
        "cert missing": pki.tls(cert_file=tmp_path / "gone.crt", key_file=pki.node.key),
        "key is a cert": pki.tls(cert_file=pki.node.cert, key_file=pki.node.cert),
        "key of another cert": pki.tls(cert_file=pki.node.cert, key_file=pki.server.key),
        "encrypted key, no password": pki.tls(locked),
        "wrong password in file": pki.tls(locked, key_password_file=tmp_path / "pw-wrong"),
        "wrong password inline": pki.tls(locked, key_password=SecretStr("nope")),
        "password file missing": pki.tls(locked, key_password_file=tmp_path / "no-pw"),
    }[case]
    with pytest.raises(ConfigError) as err:
        build_context(tls)
    assert len(err.value.problems) == 1, err.value.problems
    got_field, got_reason = err.value.problems[0]
    assert got_field == field
    assert reason in got_reason
    assert "right horse" not in str(err.value)


def test_good_material_builds_one_strict_context(tmp_path, pki):
    locked = pki.ca.issue("n9", key_password="right horse")
    (tmp_path / "pw").write_text("right horse\n")
    for tls in (pki.tls(pki.node), pki.tls(locked, key_password_file=tmp_path / "pw")):
        ctx = build_context(tls)
        assert ctx.check_hostname
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.server_name == BROKER_NAME
    combined = tmp_path / "combined.pem"  # certificate and key in one file
    combined.write_bytes(pki.node.cert.read_bytes() + pki.node.key.read_bytes())
    assert build_context(pki.tls(cert_file=combined)).server_name == BROKER_NAME


@pytest.mark.parametrize(
    ("pinned", "host", "expected"),
    [
        (BROKER_NAME, "127.0.0.1", BROKER_NAME),  # what paho passes is replaced
        (BROKER_NAME, None, BROKER_NAME),
        (None, "broker.example", "broker.example"),  # nothing pinned: the host as given
    ],
)
def test_pinned_context_substitutes_the_name_it_checks(pki, pinned, host, expected):
    ctx = build_context(pki.tls(server_name=pinned))
    tls_object = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=host)
    assert tls_object.server_hostname == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"verify_hostname": False}, "server_name"),
        ({"key_file": "k.pem"}, "key_file needs cert_file"),
        ({"cert_file": "c", "key_password": "a", "key_password_file": "f"}, "not both"),
        ({"server_name": "bad name!"}, "should match pattern"),
    ],
)
def test_tls_section_rejects_a_verify_off_switch_and_inconsistent_keys(fields, message):
    with pytest.raises(ValidationError, match=message):
        TlsConfig(enabled=True, **fields)


# -- against the real broker ------------------------------------------------------------------


def test_mutual_tls_delivers_an_event_to_a_real_subscriber(broker_mtls, pki, agents):
    sub = subscriber(broker_mtls.port, pki)
    agent = agents(broker_mtls.port, tls=pki.tls(pki.node))
    try:
        assert agent.link.wait_connected(10), agent.link.status().last_error
        sent = agent.put(1)
        assert sub.wait_for(lambda _m: event_ids(sub) == [sent], 10)
        assert agent.publisher.drain(5)
        status = agent.link.status()
        assert (status.connects, status.disconnects, status.last_error) == (1, 0, None)
    finally:
        sub.close()


@pytest.mark.parametrize(
    ("client", "why"),
    [
        ("none", "tlsv13 alert certificate required"),  # OpenSSL's names for TLS alerts
        ("from another CA", "tlsv1 alert unknown ca"),
    ],
)
def test_client_without_a_valid_certificate_cannot_connect(broker_mtls, pki, agents, client, why):
    cert = None if client == "none" else pki.other_ca.issue(NODE)
    agent = agents(broker_mtls.port, tls=pki.tls(cert))  # trusts the broker
    agent.put(1)
    named = f"TLS handshake with 127.0.0.1:{broker_mtls.port} failed: the broker sent {why}"
    assert wait_until(lambda: agent.link.status().last_error == named, 10)
    assert not agent.link.connected
    assert agent.link.status().connects == 0
    assert agent.outbox.stats().depth == 1


def attempts(broker: Mosquitto) -> int:
    """Failed TLS connections the broker saw (its own log)."""
    return broker.log_path.read_text(errors="replace").count("OpenSSL Error")


def test_expired_client_certificate_is_named_outbox_kept_then_delivered(
    broker_mtls, pki, agents, caplog
):
    sub = subscriber(broker_mtls.port, pki)
    expired = pki.ca.issue(NODE, expired=True)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.delivery.mqtt_link"):
            agent = agents(broker_mtls.port, tls=pki.tls(expired))
            sent = [agent.put(i) for i in range(3)]
            # retried with backoff; the broker's alert names the reason (now and then the
            # alert is lost and OpenSSL reports only an EOF: wait for an attempt that has it)
            named = (
                f"TLS handshake with 127.0.0.1:{broker_mtls.port} failed: "
                "the broker sent sslv3 alert certificate expired"
            )
            assert wait_until(
                lambda: attempts(broker_mtls) >= 3 and agent.link.status().last_error == named,
                15,
            )
        assert agent.link.status().connects == 0
        assert len(warnings_with(caplog, "certificate expired")) == 1  # once per reason
        assert agent.outbox.stats().depth == 3
        agent.stop()

        # the fix (a renewed certificate) on the same outbox: everything is delivered
        fixed = agents(broker_mtls.port, tls=pki.tls(pki.node))
        assert fixed.publisher.drain(15)
        assert sub.wait_for(lambda _m: event_ids(sub) == sent, 10)
    finally:
        sub.close()


def test_untrusted_broker_is_named_and_delivery_resumes_once_fixed(tmp_path, pki, agents, caplog):
    impostor = pki.other_ca.issue(BROKER_NAME, dns=(BROKER_NAME,), server=True)
    b = mtls_broker(tmp_path / "broker", pki, broker_cert=impostor, persistent=True)
    b.start()
    # the watching server trusts both CAs and holds a persistent session across the restart
    both = tmp_path / "both-cas.pem"
    both.write_bytes(pki.ca.cert.read_bytes() + pki.other_ca.cert.read_bytes())
    sub = Subscriber(b.port, f"{BASE}/#", persistent=True,
                     tls=build_context(pki.tls(pki.server, ca_file=both)))  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="agent.delivery.mqtt_link"):
            agent = agents(b.port, tls=pki.tls(pki.node))
            sent = agent.put(1)
            assert wait_until(lambda: attempts(b) >= 3, 15)
        why = str(agent.link.status().last_error)
        assert "TLS handshake" in why
        assert "certificate verify failed: unable to get local issuer certificate" in why
        assert len(warnings_with(caplog, "certificate verify failed")) == 1
        assert agent.outbox.stats().depth == 1
        assert event_ids(sub) == []

        # the broker gets its real certificate back: the same link reconnects and delivers
        b.stop()
        shutil.copyfile(pki.broker.cert, impostor.cert)
        shutil.copyfile(pki.broker.key, impostor.key)
        b.start()
        assert agent.publisher.drain(15)
        assert sub.wait_for(lambda _m: event_ids(sub) == [sent], 15)
        assert agent.link.status().connects == 1
    finally:
        sub.close()
        b.stop()


def test_expired_broker_certificate_is_named(tmp_path, pki, agents):
    stale = pki.ca.issue(BROKER_NAME, dns=(BROKER_NAME,), server=True, expired=True)
    b = mtls_broker(tmp_path / "broker", pki, broker_cert=stale)
    b.start()
    try:
        agent = agents(b.port, tls=pki.tls(pki.node))
        agent.put(1)
        assert wait_until(lambda: agent.link.status().last_error is not None, 10)
        why = str(agent.link.status().last_error)
        assert why.endswith("failed: certificate verify failed: certificate has expired")
        assert agent.outbox.stats().depth == 1
    finally:
        b.stop()


@pytest.mark.parametrize(
    ("server_name", "why"),
    [
        (None, "IP address mismatch, certificate is not valid for '127.0.0.1'"),
        ("wrong.xuan-dinh.lan", "Hostname mismatch, certificate is not valid for 'wrong."),
        (BROKER_NAME, None),
    ],
)
def test_pinned_server_name_is_what_is_verified(broker_mtls, pki, agents, server_name, why):
    """127.0.0.1 is not in the broker's certificate: only the pinned right name connects."""
    agent = agents(broker_mtls.port, tls=pki.tls(pki.node, server_name=server_name))
    if why is None:
        assert agent.link.wait_connected(10), agent.link.status().last_error
        return
    assert wait_until(lambda: agent.link.status().last_error is not None, 10)
    assert not agent.link.connected
    assert why in str(agent.link.status().last_error)


@pytest.mark.slow
def test_node_cannot_publish_as_another_node(broker_mtls, pki, agents):
    """A box whose certificate says n2 but whose config says n1 publishes under n1's subtree:
    the broker answers "Not authorized" (135); the message ends dead-lettered and counted,
    and the link is not torn down (no reconnect storm)."""
    watcher = subscriber(broker_mtls.port, pki)
    n2 = pki.ca.issue("n2")
    try:
        agent = agents(broker_mtls.port, tls=pki.tls(n2))
        assert agent.link.wait_connected(10), agent.link.status().last_error
        sent = agent.put(1)
        assert wait_until(lambda: agent.publisher.stats().dead_letters == 1, 30)
        assert agent.outbox.stats().dead_letters == 1  # the count that survives restarts
        assert agent.publisher.stats().refused == MqttConfig().refused_retries  # then given up
        [dead] = agent.outbox.dead_letters()
        assert (dead.msg_id, dead.topic) == (sent, f"{BASE}/events")
        assert "Not authorized" in dead.reason
        assert "0x87" in dead.reason  # v5 reason code 135
        assert agent.outbox.stats().depth == 0
        status = agent.link.status()
        assert (status.connects, status.disconnects) == (1, 0)
        assert status.failed >= 1  # v5 failure reason codes seen on PUBACK
        assert event_ids(watcher) == []
    finally:
        watcher.close()


def password_broker(folder: Path, pki: Pki) -> Mosquitto:
    """TLS without client certificates; user names and passwords instead."""
    tls = BrokerTls(pki.ca.cert, pki.broker.cert, pki.broker.key)
    users = {NODE: "n1-secret", "commune-server": "server-secret"}
    return Mosquitto(folder, tls=tls, acl=ACL, anonymous=False, users=users)


def test_username_and_password_over_tls(tmp_path, pki, agents):
    b = password_broker(tmp_path / "broker", pki)
    b.start()
    pw = tmp_path / "mqtt.pw"
    pw.write_text("n1-secret\n")
    sub = Subscriber(b.port, "camnet/#", tls=build_context(pki.tls()),
                     auth=("commune-server", "server-secret"))  # fmt: skip
    try:
        agent = agents(b.port, tls=pki.tls(), username=NODE, password_file=pw)
        assert agent.link.wait_connected(10), agent.link.status().last_error
        sent = agent.put(1)
        assert sub.wait_for(lambda _m: event_ids(sub) == [sent], 10)
        wrong = agents(b.port, outbox="wrong.db", tls=pki.tls(), username=NODE,
                       password=SecretStr("guess"))  # fmt: skip
        assert wait_until(lambda: wrong.link.status().refused >= 1, 10)
        assert "Not authorized" in str(wrong.link.status().last_error)
        assert not wrong.link.connected
    finally:
        sub.close()
        b.stop()


# -- the command line -------------------------------------------------------------------------


def agent_config(tmp_path: Path, port: int, tls: dict[str, Any]) -> Path:
    cfg = {
        "node_id": NODE,
        "commune_id": COMMUNE,
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_max_s": 1, "tls": tls},
        "cameras": [{"id": "door", "source": "rtsp://cam.invalid/stream"}],
        "detector": {"model": str(MODELS / "yolox_nano_416.onnx")},
        "outbox": {"path": str(tmp_path / "data" / "outbox.db")},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def tls_section(pki: Pki, client: Issued) -> dict[str, Any]:
    return {"enabled": True, "ca_file": str(pki.ca.cert), "cert_file": str(client.cert),
            "key_file": str(client.key), "server_name": BROKER_NAME}  # fmt: skip


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def test_bad_tls_file_makes_run_and_check_config_exit_2_naming_the_field(tmp_path, pki):
    tls = tls_section(pki, pki.node) | {"key_file": str(junk(tmp_path / "key.pem"))}
    config = agent_config(tmp_path, 8883, tls)
    config.chmod(0o644)
    run = cli("run", "--config", str(config))
    assert run.returncode == 2, run.stderr[-2000:]
    assert "mqtt.tls.key_file: no PEM private key in it" in run.stderr
    assert f"{config} is readable by other users (mode 0644)" in run.stderr  # a warning only
    check = cli("check-config", str(config))
    assert check.returncode == 2
    assert "mqtt.tls.key_file: no PEM private key in it" in check.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_secret_files_readable_by_others_are_warned_about(tmp_path, pki, capsys):
    pw = tmp_path / "key.pw"
    pw.write_text("right horse\n")
    locked = pki.ca.issue("n9", key_password="right horse")
    config = agent_config(tmp_path, 8883, tls_section(pki, locked) | {"key_password_file": str(pw)})
    for path in (config, pw, locked.key):
        path.chmod(0o640)
    assert main(["check-config", str(config)]) == 0
    err = capsys.readouterr().err
    assert f"warning: config file: {config} is readable by other users (mode 0640)" in err
    assert f"warning: mqtt.tls.key_file: {locked.key} is readable by other users" in err
    assert f"warning: mqtt.tls.key_password_file: {pw} is readable" in err
    assert "right horse" not in err
    for path in (config, pw, locked.key):
        path.chmod(0o600)
    assert main(["check-config", str(config)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_outbox_drain_over_mutual_tls_from_the_config_file(tmp_path, broker_mtls, pki):
    config = agent_config(tmp_path, broker_mtls.port, tls_section(pki, pki.node))
    box = Outbox.open(OutboxConfig(path=tmp_path / "data" / "outbox.db"))
    body = b'{"id":"m-cli"}'
    box.put([OutMessage("event", f"{BASE}/events", body, 1, "m-cli", "ev-cli")])
    box.close()
    sub = subscriber(broker_mtls.port, pki)
    try:
        drain = cli("outbox", "drain", "--config", str(config), "--timeout", "20")
        assert drain.returncode == 0, drain.stderr[-2000:]
        assert sub.wait_for(lambda _m: event_ids(sub) == ["m-cli"], 10)
    finally:
        sub.close()


def test_tail_reads_over_mutual_tls_with_its_options(tmp_path, broker_mtls, pki, agents):
    args = ["tail", "--port", str(broker_mtls.port), "--json", "--cafile", str(pki.ca.cert),
            "--cert", str(pki.server.cert), "--key", str(pki.server.key),
            "--tls-server-name", BROKER_NAME, "--topic", f"{BASE}/events"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        agent = agents(broker_mtls.port, tls=pki.tls(pki.node))
        assert agent.link.wait_connected(10)
        assert proc.stdout is not None
        sent: list[str] = []
        while len(sent) < 100 and not _readable(proc.stdout, 0.3):  # until tail subscribed
            sent.append(agent.put(len(sent)))
            assert agent.publisher.drain(5)
        got = json.loads(proc.stdout.readline())
        assert got["topic"] == f"{BASE}/events"
        assert got["payload"]["id"] in sent
    finally:
        proc.terminate()
        proc.wait(10)


def _readable(stream: Any, timeout: float) -> bool:
    return bool(select.select([stream], [], [], timeout)[0])


def test_tail_takes_the_agents_mqtt_section_and_options_override_it(tmp_path, pki):
    config = agent_config(tmp_path, 18883, tls_section(pki, pki.node))
    args = _parser().parse_args(["tail", "--config", str(config)])
    cfg, topic = tail_mqtt_config(args)
    assert (cfg.port, cfg.tls.enabled, cfg.tls.server_name) == (18883, True, BROKER_NAME)
    assert cfg.tls.cert_file == pki.node.cert
    assert topic == "camnet/#"
    args = _parser().parse_args(["tail", "--config", str(config), "--cert", str(pki.server.cert),
                                 "--key", str(pki.server.key), "--port", "8884"])  # fmt: skip
    cfg, _ = tail_mqtt_config(args)
    assert (cfg.port, cfg.tls.cert_file, cfg.tls.ca_file) == (8884, pki.server.cert, pki.ca.cert)
    plain = tail_mqtt_config(_parser().parse_args(["tail"]))[0]
    assert (plain.port, plain.tls.enabled) == (1883, False)
    tls_only = tail_mqtt_config(_parser().parse_args(["tail", "--cafile", str(pki.ca.cert)]))[0]
    assert (tls_only.port, tls_only.tls.enabled) == (8883, True)


def test_tail_names_the_bad_option(tmp_path, pki, capsys):
    bad = junk(tmp_path / "ca.pem")
    assert main(["tail", "--cafile", str(bad), "--port", "1"]) == 2
    assert f"--cafile: no PEM certificate in {bad}" in capsys.readouterr().err
    args = ["tail", "--cafile", str(pki.ca.cert), "--cert", str(pki.node.cert),
            "--key", str(pki.server.key)]  # fmt: skip
    assert main(args) == 2
    assert "--key: the private key does not match the certificate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no client certificate", "connection closed: tlsv13 alert certificate required"),
        ("wrong pinned name", "TLS handshake failed: certificate verify failed: Hostname mismatch"),
    ],
)
def test_tail_names_why_it_cannot_connect(broker_mtls, pki, caplog, case, why):
    tls = pki.tls() if case == "no client certificate" else pki.tls(pki.server, server_name="x.lan")
    t = Tail("127.0.0.1", broker_mtls.port, "camnet/#", lambda _line: None, tls=build_context(tls))
    with caplog.at_level(logging.WARNING, logger="agent.tools.tail"):
        t.start()
        try:
            assert wait_until(lambda: str(t.last_error).startswith(why), 10)
        finally:
            assert t.stop(timeout=30), "the tail thread did not end"
    assert not t.subscribed.is_set()
    assert warnings_with(caplog, why)
