"""The Ansible roles against real things: a Debian bookworm root filesystem (chroot connection)
for ``edge_agent``, a real Mosquitto configured by ``commune_broker`` with a real commune CA,
and the agent configured by the role publishing through that broker.

Needs root (chroot, debootstrap) and what scripts/ansible-deps.sh caches (``make setup-tests``).
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.tools.localbroker import free_port, wait_port
from tests.ansible_support import (
    ANSIBLE_DIR,
    CONTROLLER,
    REPO,
    MountedImage,
    PlayResult,
    build_wheelhouse,
    controller_env,
    copy_example_inventory,
    ensure_deps,
    in_root,
    make_stock_image,
    run_playbook,
)
from tests.conftest import MEDIA, MODELS

pytestmark = [
    pytest.mark.slow,
    # the first test of each group also builds its fixture (an image, a broker): up to a few
    # minutes on a loaded machine, more than the suite's default of 300 s per test
    pytest.mark.timeout(1200),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and debootstrap need root"),
]

NODE = "xd-0001"  # group rpi in the example inventory
COMMUNE = "xuan-dinh"
MANIFEST = json.loads((REPO / "models" / "manifest.json").read_text())
MODEL = next(m for m in MANIFEST["models"] if m["name"] == "yolox_nano_416")
UNIT = "/etc/systemd/system/edge-agent.service"
SECURITY_MAX_EXPOSURE = 2.5  # systemd-analyze security: 1.8 when written ("OK")


@pytest.fixture(scope="module")
def deps() -> None:
    ensure_deps()


# --- edge_agent on a root filesystem -----------------------------------------------------------


@dataclass
class Provisioned:
    root: Path
    image_run: PlayResult
    image_etc: list[str]
    provision: subprocess.CompletedProcess[str]
    node_run: PlayResult
    again_run: PlayResult
    identity_run: PlayResult
    logs: Path


@pytest.fixture(scope="module")
def provisioned(deps: None) -> Iterator[Provisioned]:
    """A node the way technicians make one, on a bookworm root filesystem:

    images/rpi-image.sh turns a stand-in "stock image" (a disk image whose partition 2 is the
    debootstrap rootfs) into a shared image (image mode, no identity); the image is mounted,
    the node's bundle (playbooks/bundle.yml) goes onto its boot partition and the first-boot
    script installs it; then site.yml in node mode over the chroot connection, and again.

    In a folder of its own (pytest's tmp_path may be pruned by other pytest runs on the
    machine), removed afterwards.
    """
    tmp = Path(tempfile.mkdtemp(prefix="edge-agent-image-", dir="/var/tmp"))
    mounted: list[MountedImage] = []
    try:
        yield _provision(tmp, mounted)
    finally:
        for m in mounted:
            m.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _provision(tmp: Path, mounted: list[MountedImage]) -> Provisioned:
    logs = tmp / "logs"
    logs.mkdir()
    wheels = build_wheelhouse(tmp / "wheelhouse")
    root = tmp / "root"
    chroot_vars = (
        "ansible_connection: community.general.chroot\n"
        f"ansible_host: {root}\n"
        "ansible_become: false\n"
        f"edge_agent_wheelhouse: {wheels}\n"
        f"edge_agent_model_src_dir: {MODELS}\n"
    )
    # no network at test time: the role's packages are in the cached rootfs's apt cache
    inventory = copy_example_inventory(
        tmp / "inventory", {NODE: chroot_vars}, {"nodes": "edge_agent_apt_update_cache: false\n"}
    )

    stock = make_stock_image(tmp / "stock.img")
    image = tmp / "edge-agent.img"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "images" / "rpi-image.sh"), "-i", str(inventory), "-w", str(wheels),
         "-m", str(MODELS), str(stock), str(image)],
        capture_output=True, text=True, timeout=900, env=controller_env(), check=False,
    )  # fmt: skip
    image_run = PlayResult(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0)
    (logs / "image.log").write_text(image_run.output)
    assert image_run.rc == 0, image_run.output[-4000:]
    stock.unlink()

    mounted.append(MountedImage(image, root))
    image_etc = sorted(p.name for p in (root / "etc" / "edge-agent").iterdir())
    # the technician's bundle for this node, copied onto the boot partition of the image
    bundles = tmp / "bundles"
    bundle = run_playbook(
        inventory, "bundle.yml", "--limit", NODE, "-e", f"edge_agent_bundle_dir={bundles}",
        log=logs / "bundle.log",
    )  # fmt: skip
    assert bundle.rc == 0, bundle.output[-3000:]
    shutil.copytree(bundles / NODE, root / "boot" / "firmware" / "edge-agent")
    provision = in_root(root, "/usr/local/sbin/edge-agent-provision")

    node = run_playbook(inventory, "site.yml", "--limit", NODE, log=logs / "node.log")
    again = run_playbook(inventory, "site.yml", "--limit", NODE, log=logs / "again.log")
    identity = run_playbook(
        inventory, "site.yml", "--limit", NODE, "--tags", "identity", log=logs / "identity.log"
    )
    print(
        f"\nrpi-image.sh {image_run.seconds:.0f}s, bundle {bundle.seconds:.0f}s, "
        f"node mode {node.seconds:.0f}s, second run {again.seconds:.0f}s"
    )
    return Provisioned(root, image_run, image_etc, provision, node, again, identity, logs)


def test_image_mode_installs_the_agent_without_any_identity(provisioned: Provisioned) -> None:
    recap = provisioned.image_run.recap("image-build")
    assert recap["failed"] == 0
    assert recap["changed"] > 0
    assert provisioned.image_etc == []  # no config, no key, no password in the shared image
    out = provisioned.image_run.output
    assert "Install the node's client key" not in out
    assert "Install the agent configuration" not in out
    # the provisioning unit is enabled in the image; the agent too (it waits for a config)
    wants = provisioned.root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "edge-agent-provision.service").is_symlink()
    assert (wants / "edge-agent.service").is_symlink()


def test_first_boot_installs_the_bundle_and_wipes_it(provisioned: Provisioned) -> None:
    root = provisioned.root
    assert provisioned.provision.returncode == 0, provisioned.provision.stderr
    assert "ok (1 camera(s), node xd-0001)" in provisioned.provision.stdout
    assert not (root / "boot/firmware/edge-agent").exists()
    key = in_root(root, "stat", "-c", "%U:%G %a", "/etc/edge-agent/client.key")
    assert key.stdout.strip() == "edgeagent:edgeagent 600"
    script = root / "usr/local/sbin/edge-agent-provision"
    lint = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout


def test_node_mode_converges_and_a_second_run_changes_nothing(provisioned: Provisioned) -> None:
    assert provisioned.node_run.rc == 0, provisioned.node_run.output[-4000:]
    assert provisioned.again_run.rc == 0, provisioned.again_run.output[-4000:]
    recap = provisioned.again_run.recap(NODE)
    assert recap["changed"] == 0, provisioned.again_run.output[-6000:]
    assert recap["failed"] == 0


def test_an_identity_only_run_touches_only_the_identity(provisioned: Provisioned) -> None:
    run = provisioned.identity_run
    assert run.rc == 0, run.output[-4000:]
    assert run.recap(NODE)["changed"] == 0
    assert "Install the agent configuration" in run.output
    assert "Copy the wheelhouse" not in run.output
    assert "Copy the model" not in run.output


def test_the_venv_runs_the_agent_and_accepts_the_rendered_config(
    provisioned: Provisioned,
) -> None:
    root = provisioned.root
    version = in_root(root, "/opt/edge-agent/venv/bin/edge-agent", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("edge-agent ")
    check = in_root(
        root, "/opt/edge-agent/venv/bin/edge-agent", "check-config", "/etc/edge-agent/agent.yaml"
    )
    assert check.returncode == 0, check.stderr
    assert "warning" not in check.stderr  # no secret readable by other users
    heavy = in_root(root, "/opt/edge-agent/venv/bin/python", "-c", "import cv2, onnxruntime")
    assert heavy.returncode == 0, heavy.stderr
    cfg = (root / "etc/edge-agent/agent.yaml").read_text()
    assert "node_id: xd-0001" in cfg
    assert 'password_file: "/etc/edge-agent/camera-gate.password"' in cfg
    assert "gate#pass" not in cfg  # the camera password lives only in its 0600 file


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/edge-agent", "root:edgeagent 750"),
        ("/etc/edge-agent/agent.yaml", "edgeagent:edgeagent 600"),
        ("/etc/edge-agent/client.key", "edgeagent:edgeagent 600"),
        ("/etc/edge-agent/camera-gate.password", "edgeagent:edgeagent 600"),
        ("/etc/edge-agent/client.crt", "root:root 644"),
        ("/etc/edge-agent/ca.crt", "root:root 644"),
        ("/var/lib/edge-agent", "edgeagent:edgeagent 700"),
        ("/var/lib/edge-agent/models", "root:edgeagent 750"),
        (f"/var/lib/edge-agent/models/{MODEL['file']}", "root:edgeagent 640"),
        (UNIT, "root:root 644"),
    ],
)
def test_modes_and_owners(provisioned: Provisioned, path: str, expected: str) -> None:
    got = in_root(provisioned.root, "stat", "-c", "%U:%G %a", path)
    assert got.stdout.strip() == expected, got.stderr


def test_service_user_is_a_system_account_without_login(provisioned: Provisioned) -> None:
    entry = in_root(provisioned.root, "getent", "passwd", "edgeagent").stdout.strip().split(":")
    assert int(entry[2]) < 1000
    assert entry[6] == "/usr/sbin/nologin"
    groups = in_root(provisioned.root, "id", "-nG", "edgeagent").stdout.split()
    assert "video" in groups


def test_model_matches_the_manifest_checksum(provisioned: Provisioned) -> None:
    out = in_root(provisioned.root, "sha256sum", f"/var/lib/edge-agent/models/{MODEL['file']}")
    assert out.stdout.split()[0] == MODEL["sha256"]


def test_unit_is_enabled_and_clean_under_the_rootfs_systemd(provisioned: Provisioned) -> None:
    root = provisioned.root
    for unit in ("edge-agent.service", "systemd-timesyncd.service", "edge-agent-provision.service"):
        enabled = in_root(root, "systemctl", "is-enabled", unit)
        assert enabled.stdout.strip() == "enabled", unit + enabled.stdout + enabled.stderr
    for unit in (UNIT, "/etc/systemd/system/edge-agent-provision.service"):
        out = in_root(root, "systemd-analyze", "verify", "--man=no", unit)
        assert out.returncode == 0
        assert out.stdout + out.stderr == "", f"{unit}: {out.stdout}{out.stderr}"
    text = (root / UNIT.lstrip("/")).read_text()
    for line in (
        "Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure",
        "RestartPreventExitStatus=2 3", "StartLimitBurst=10", "NoNewPrivileges=yes",
        "Environment=MALLOC_ARENA_MAX=2", "ProtectProc=invisible",
        "ProtectSystem=strict", "ReadWritePaths=/var/lib/edge-agent", "PrivateTmp=yes",
        "ProtectHome=yes", "DevicePolicy=closed", "DeviceAllow=char-video4linux rw",
        "CapabilityBoundingSet=\n",
    ):  # fmt: skip
        assert line in text if line.endswith("\n") else f"\n{line}\n" in text, line


def test_unit_exposure_score(provisioned: Provisioned) -> None:
    out = in_root(provisioned.root, "systemd-analyze", "security", "--offline=true", UNIT)
    m = re.search(r"Overall exposure level for edge-agent.service: ([\d.]+) (\w+)", out.stdout)
    assert m, out.stdout[-2000:] + out.stderr
    (provisioned.logs / "security.txt").write_text(out.stdout)
    print(f"systemd-analyze security: {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= SECURITY_MAX_EXPOSURE


def test_journald_timesync_and_pi_watchdog_drop_ins(provisioned: Provisioned) -> None:
    etc = provisioned.root / "etc/systemd"
    assert "SystemMaxUse=64M" in (etc / "journald.conf.d/50-edge-agent.conf").read_text()
    assert "NTP=10.8.0.1" in (etc / "timesyncd.conf.d/50-edge-agent.conf").read_text()
    # xd-0001 is in group rpi: systemd feeds the hardware watchdog
    assert (
        "RuntimeWatchdogSec=15" in (etc / "system.conf.d/50-edge-agent-watchdog.conf").read_text()
    )


def test_an_invalid_bundle_keeps_the_working_configuration(provisioned: Provisioned) -> None:
    root = provisioned.root
    before = (root / "etc/edge-agent/agent.yaml").read_text()
    bundle = root / "boot/firmware/edge-agent"
    bundle.mkdir()
    (bundle / "agent.yaml").write_text(before.replace("node_id: xd-0001", "node_id: Not An Id"))
    try:
        out = in_root(root, "/usr/local/sbin/edge-agent-provision")
        assert out.returncode == 2, out.stdout + out.stderr
        assert "node_id" in out.stderr  # check-config names the field
        assert (bundle / "agent.yaml").exists()  # kept for the technician
        assert (root / "etc/edge-agent/agent.yaml").read_text() == before
        assert not list((root / "etc").glob("edge-agent.provision-backup.*"))
    finally:
        shutil.rmtree(bundle)


@dataclass(frozen=True)
class Booted:
    active: str
    show: dict[str, str]
    proc_status: dict[str, str]
    security: str
    journal: str


def _podman(*args: str, env: dict[str, str], timeout: float = 300) -> str:
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    ).stdout.strip()


@pytest.fixture(scope="module")
def booted(provisioned: Provisioned) -> Iterator[Booted]:
    """The provisioned image booted with systemd as PID 1 (rootful podman, runc, no network):
    the agent under the real unit, sandbox and notify protocol included."""
    if shutil.which("podman") is None:
        pytest.fail("podman not installed: run scripts/ansible-deps.sh")
    conf = provisioned.logs / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    name = f"edge-agent-boot-{os.getpid()}"
    image = f"localhost/{name}:latest"
    tar = subprocess.Popen(["tar", "-C", str(provisioned.root), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["podman", "import", "-q", "-", image], stdin=tar.stdout, env=env, check=True,
        capture_output=True, timeout=600,
    )  # fmt: skip
    tar.wait(60)
    try:
        _podman(
            "run", "-d", "--name", name, "--network", "none", "--systemd=always", image,
            "/lib/systemd/systemd", env=env,
        )  # fmt: skip
        unit = "edge-agent.service"
        active = ""
        for _ in range(90):  # boot, model load, READY=1
            active = _podman("exec", name, "systemctl", "is-active", unit, env=env)
            if active in {"active", "failed"}:
                break
            time.sleep(1)
        # outlive WatchdogSec (30 s): pings must keep coming, or systemd restarts the agent
        time.sleep(40)
        props = "ActiveState,SubState,NRestarts,StatusText,MainPID,Result"
        show_text = _podman("exec", name, "systemctl", "show", unit, "-p", props, env=env)
        show = dict(line.split("=", 1) for line in show_text.splitlines() if "=" in line)
        status = _podman("exec", name, "cat", f"/proc/{show.get('MainPID', '0')}/status", env=env)
        proc_status = {
            k: v.strip() for k, v in (line.split(":", 1) for line in status.splitlines())
        }
        security = _podman("exec", name, "systemd-analyze", "security", unit, env=env)
        journal = _podman("exec", name, "journalctl", "-u", unit, "--no-pager", env=env)
        yield Booted(active, show, proc_status, security, journal)
    finally:
        _podman("rm", "-f", "-t", "1", name, env=env)
        _podman("rmi", "-f", image, env=env)


def test_the_agent_runs_under_systemd_with_its_sandbox(booted: Booted) -> None:
    assert booted.active == "active", booted.journal[-3000:]
    assert booted.show["ActiveState"] == "active", booted.journal[-3000:]
    assert booted.show["NRestarts"] == "0", booted.journal[-3000:]  # watchdog pings arrive
    assert "camera" in booted.show["StatusText"]  # the agent's STATUS= line
    assert booted.proc_status["NoNewPrivs"] == "1"
    assert booted.proc_status["CapBnd"] == "0000000000000000"
    assert booted.proc_status["CapEff"] == "0000000000000000"
    assert booted.proc_status["Seccomp"] == "2"  # SystemCallFilter in force
    assert booted.proc_status["Uid"].split()[0] != "0"
    m = re.search(r"Overall exposure level for edge-agent.service: ([\d.]+) (\w+)", booted.security)
    assert m, booted.security[-2000:]
    print(f"systemd-analyze security (booted): {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= SECURITY_MAX_EXPOSURE


def test_ansible_lint_production_profile(deps: None) -> None:
    proc = subprocess.run(
        [str(CONTROLLER / "bin" / "ansible-lint"), "--offline", "--profile", "production"],
        cwd=ANSIBLE_DIR, env=controller_env(), capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = [
        REPO / "ansible/scripts/ca.sh",
        REPO / "scripts/ansible-deps.sh",
        REPO / "scripts/build-wheelhouse.sh",
        *sorted((REPO / "images").glob("*.sh")),
    ]
    proc = subprocess.run(
        ["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout


# --- commune_broker with a real Mosquitto and a real CA ------------------------------------


CA_SH = ANSIBLE_DIR / "scripts" / "ca.sh"


@dataclass(frozen=True)
class Commune:
    dir: Path
    ca: Path
    port: int

    def cert(self, name: str) -> tuple[Path, Path]:
        return (
            self.dir / "ca" / "issued" / f"{name}.crt",
            self.dir / "ca" / "issued" / f"{name}.key",
        )


def ca(work: Path, *args: str) -> None:
    subprocess.run(
        [str(CA_SH), str(work / "ca"), *args], check=True, capture_output=True, timeout=60
    )


@pytest.fixture(scope="module")
def commune(deps: None) -> Iterator[Commune]:
    """A commune CA, certificates, and Mosquitto configured by the commune_broker role.

    The folder is world-traversable: mosquitto, started as root, switches to the mosquitto
    user, so the role's owners and modes are what make it work.
    """
    work = Path(tempfile.mkdtemp(prefix="edge-agent-commune-", dir="/tmp"))
    work.chmod(0o755)
    try:
        ca(work, "init", COMMUNE)
        for node in ("xd-0001", "xd-0002", "xd-0003"):
            ca(work, "node", node)
        ca(work, "account", "commune-server")
        ca(work, "broker", "broker-test", "127.0.0.1", "localhost")
        ca(work, "node", "xd-0009")
        ca(work, "revoke", "xd-0009")
        for ext in ("crt", "key"):  # the revoked pair, as a thief would hold it
            revoked = next((work / "ca" / "revoked").glob(f"xd-0009.*.{ext}"))
            shutil.copy(revoked, work / "ca" / "issued" / f"xd-0009-revoked.{ext}")
        port = free_port()
        issued = work / "ca" / "issued"
        inventory = work / "inventory.yml"
        inventory.write_text(
            json.dumps({"all": {"children": {"brokers": {"hosts": {"test-broker": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "commune_broker_commune_id": COMMUNE,
                "commune_broker_server_accounts": ["commune-server"],
                "commune_broker_ca_cert": (work / "ca" / "ca.crt").read_text(),
                "commune_broker_crl": (work / "ca" / "crl.pem").read_text(),
                "commune_broker_cert": (issued / "broker-test.crt").read_text(),
                "commune_broker_key": (issued / "broker-test.key").read_text(),
                "commune_broker_port": port,
                "commune_broker_bind_address": "127.0.0.1",
                "commune_broker_install_package": False,
                "commune_broker_manage_service": False,
                "commune_broker_start_service": False,
                "commune_broker_etc_dir": str(work / "etc"),
                "commune_broker_data_dir": str(work / "data"),
                "commune_broker_libexec_dir": str(work / "libexec"),
            }}}}}})
        )  # fmt: skip
        (work / "vault-password.TEST-ONLY").write_text("unused\n")
        play = run_playbook(inventory, "broker.yml", log=work / "broker-play.log")
        assert play.rc == 0, play.output[-4000:]
        again = run_playbook(inventory, "broker.yml", log=work / "broker-again.log")
        assert again.recap("test-broker")["changed"] == 0, again.output[-4000:]
        log = (work / "mosquitto.log").open("wb")
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(work / "etc" / "mosquitto.conf")],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert wait_port("127.0.0.1", port, 10), (work / "mosquitto.log").read_text()
            yield Commune(work, work / "ca" / "ca.crt", port)
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_broker_files_are_readable_by_the_mosquitto_user_only(commune: Commune) -> None:
    etc = commune.dir / "etc"
    mosquitto_gid = grp.getgrnam("mosquitto").gr_gid
    for path in (etc / "certs" / "broker.key", etc / "acl", etc / "mosquitto.conf"):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, mosquitto_gid, 0o640), path
    data = (commune.dir / "data").stat()
    assert (pwd.getpwuid(data.st_uid).pw_name, stat.S_IMODE(data.st_mode)) == ("mosquitto", 0o700)
    conf = (etc / "mosquitto.conf").read_text()
    for line in ("autosave_interval 5", "max_queued_messages 100000", "require_certificate true"):
        assert f"\n{line}\n" in conf


CHECK = ANSIBLE_DIR / "roles" / "commune_broker" / "files" / "mosquitto-check-config"
CHECK_TASK = "Check Mosquitto with the new certificates, key or ACL"


def broker_inventory(commune: Commune, name: str, **host_vars: str) -> Path:
    """The commune fixture's broker inventory with ``host_vars`` changed, as ``name``."""
    inventory = json.loads((commune.dir / "inventory.yml").read_text())
    inventory["all"]["children"]["brokers"]["hosts"]["test-broker"].update(host_vars)
    path = commune.dir / name
    path.write_text(json.dumps(inventory))
    return path


def test_a_configuration_mosquitto_refuses_is_not_installed(commune: Commune) -> None:
    """A typo in a role variable: the throwaway broker of the check refuses the new
    configuration, the play fails with Mosquitto's own error, the installed file is kept."""
    conf = commune.dir / "etc" / "mosquitto.conf"
    before = conf.read_bytes()
    # Mosquitto's name is tlsv1.2
    bad = broker_inventory(commune, "inventory-bad.yml", commune_broker_tls_version="tls1.2")
    play = run_playbook(bad, "broker.yml", log=commune.dir / "broker-bad.log")
    assert play.rc != 0
    assert re.search(r'Unsupported tls_version \\?"tls1\.2', play.output), play.output[-4000:]
    assert conf.read_bytes() == before
    assert "tlsv1.2" in before.decode()
    assert wait_port("127.0.0.1", commune.port, 5)  # the live broker is untouched


def test_a_broker_key_that_is_not_the_certificates_stops_the_play_before_a_restart(
    commune: Commune,
) -> None:
    """Only the key changes (the configuration does not): the check runs on the installed
    files and fails the play with Mosquitto's error, before the restart handler."""
    other_key = commune.cert("xd-0001")[1].read_text()  # another pair's key
    bad = broker_inventory(commune, "inventory-key.yml", commune_broker_key=other_key)
    try:
        play = run_playbook(bad, "broker.yml", log=commune.dir / "broker-key.log")
        assert play.rc != 0
        assert play.task(CHECK_TASK) == "fatal", play.output[-4000:]
        assert re.search(r"Unable to load server key file", play.output), play.output[-4000:]
        assert "RUNNING HANDLER" not in play.output
    finally:  # the good key back, for the tests after this one
        good = commune.dir / "inventory.yml"
        fixed = run_playbook(good, "broker.yml", log=commune.dir / "broker-key-fixed.log")
    assert fixed.rc == 0, fixed.output[-4000:]
    assert fixed.task(CHECK_TASK) == "ok", fixed.output[-4000:]


def load_check() -> ModuleType:
    """The role's check script (a file without .py) as a module."""
    loader = SourceFileLoader("mosquitto_check_config", str(CHECK))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("config", "kept", "dropped", "listeners"),
    [
        ("listener 8883 10.0.0.2\ncafile /x\npersistence true\npid_file /run/m.pid\n",
         ["cafile /x", "# persistence true", "# pid_file /run/m.pid"], [], 1),
        ("allow_anonymous false\nlog_dest file /var/log/m.log\n",  # default listener: moved
         ["allow_anonymous false", "# log_dest file /var/log/m.log"], [], 1),
        ("listener 1883\nlistener 8883\nuser mosquitto\n", ["user mosquitto"],
         ["listener 1883", "listener 8883"], 2),
    ],
)  # fmt: skip
def test_the_check_runs_a_copy_on_free_local_ports_with_the_same_line_numbers(
    config: str, kept: list[str], dropped: list[str], listeners: int
) -> None:
    text, ports = load_check().check_copy(config)
    lines = text.splitlines()
    original = config.splitlines()
    for n, line in enumerate(original):  # Mosquitto's "Error found at FILE:N" stays right
        assert lines[n].split()[0] == line.split()[0] or lines[n] == f"# {line}"
    assert all(k in lines for k in kept)
    assert not any(d in lines for d in dropped)
    assert [ln for ln in lines if ln.startswith("listener ")] == [
        f"listener {p} 127.0.0.1" for p in ports
    ]
    assert len(ports) == listeners
    assert lines[-2:] == ["persistence false", "log_dest stderr"]


class Client:
    """A real paho MQTT v5 client over TLS with an optional client certificate."""

    def __init__(self, commune: Commune, cert: str | None) -> None:
        self.connected = threading.Event()
        self.refused = threading.Event()
        self.acks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"spoof-{cert}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )  # fmt: skip
        certfile, keyfile = commune.cert(cert) if cert is not None else (None, None)
        self.client.tls_set(
            ca_certs=str(commune.ca),
            certfile=str(certfile) if certfile else None,
            keyfile=str(keyfile) if keyfile else None,
        )
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_a: self.refused.set()
        try:
            self.client.connect("127.0.0.1", commune.port, 10)
        except (ssl.SSLError, OSError):
            self.refused.set()
            return
        self.client.loop_start()

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        (self.refused if rc.is_failure else self.connected).set()  # type: ignore[attr-defined]

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, rc: object, _p: object) -> None:
        with self._cond:
            self.acks[mid] = rc.value  # type: ignore[attr-defined]
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def wait_connected(self) -> bool:
        for _ in range(100):
            if self.connected.wait(0.1) or self.refused.is_set():
                break
        return self.connected.is_set() and not self.refused.is_set()

    def publish_ack(self, topic: str) -> int:
        info = self.client.publish(topic, b"{}", qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, 10), "no PUBACK"
            return self.acks[info.mid]

    def wait_messages(self, n: int, timeout: float = 10) -> list[tuple[str, bytes]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def server(commune: Commune) -> Iterator[Client]:
    c = Client(commune, "commune-server")
    assert c.wait_connected()
    c.client.subscribe(f"camnet/{COMMUNE}/#", qos=1)
    c.client.subscribe("camnet/other-commune/#", qos=1)
    yield c
    c.close()


NOT_AUTHORIZED = 135


def test_a_node_publishes_only_under_its_own_subtree(commune: Commune, server: Client) -> None:
    node = Client(commune, "xd-0001")
    try:
        assert node.wait_connected()
        own = node.publish_ack(f"camnet/{COMMUNE}/xd-0001/events")
        other = node.publish_ack(f"camnet/{COMMUNE}/xd-0003/events")
        outside = node.publish_ack("camnet/other-commune/xd-0001/events")
    finally:
        node.close()
    assert own == 0
    assert other == NOT_AUTHORIZED
    assert outside == NOT_AUTHORIZED
    got = server.wait_messages(1)
    assert [t for t, _ in got] == [f"camnet/{COMMUNE}/xd-0001/events"]


def test_the_server_account_reads_every_node(commune: Commune, server: Client) -> None:
    for node_id in ("xd-0002", "xd-0003"):
        node = Client(commune, node_id)
        try:
            assert node.wait_connected()
            assert node.publish_ack(f"camnet/{COMMUNE}/{node_id}/heartbeat") == 0
        finally:
            node.close()
    topics = {t for t, _ in server.wait_messages(2)}
    assert topics == {f"camnet/{COMMUNE}/xd-0002/heartbeat", f"camnet/{COMMUNE}/xd-0003/heartbeat"}


def test_a_client_without_a_certificate_is_refused(commune: Commune) -> None:
    anon = Client(commune, None)
    try:
        assert not anon.wait_connected()
    finally:
        anon.close()


def test_a_revoked_certificate_is_refused(commune: Commune) -> None:
    revoked = Client(commune, "xd-0009-revoked")
    try:
        assert not revoked.wait_connected()
    finally:
        revoked.close()


@pytest.fixture
def agent_config(commune: Commune, deps: None) -> Path:
    """The node's config rendered and validated by the edge_agent role's identity tasks."""
    work = commune.dir / "node"
    work.mkdir()
    (work / "data").mkdir()
    crt, key = commune.cert("xd-0001")
    inventory = work / "inventory.yml"
    inventory.write_text(
        json.dumps({"all": {"children": {"nodes": {"hosts": {"test-node": {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "edge_agent_start_service": False,
            "edge_agent_user": "root",
            "edge_agent_group": "root",
            "edge_agent_config_dir": str(work / "etc"),
            "edge_agent_data_dir": str(work / "data"),
            "edge_agent_models_dir": str(MODELS),
            "edge_agent_venv": str(Path(sys.executable).parent.parent),
            "edge_agent_model_manifest": str(REPO / "models" / "manifest.json"),
            "edge_agent_node_id": "xd-0001",
            "edge_agent_commune_id": COMMUNE,
            "edge_agent_mqtt_host": "127.0.0.1",
            "edge_agent_mqtt_port": commune.port,
            "edge_agent_mqtt_ca_cert": commune.ca.read_text(),
            "edge_agent_mqtt_client_cert": crt.read_text(),
            "edge_agent_mqtt_client_key": key.read_text(),
            "edge_agent_cameras": [{
                "id": "door", "source": str(MEDIA / "one-by-one-person-detection.mp4"),
                "realtime": False, "detect_fps": 5,
            }],
            "edge_agent_detector": {"threads": 1},
            "edge_agent_config_extra": {"shutdown": {"drain_timeout_s": 5}},
        }}}}}})
    )  # fmt: skip
    (work / "vault-password.TEST-ONLY").write_text("unused\n")
    (work / "etc").mkdir(mode=0o750)
    play = run_playbook(inventory, "../../tests/ansible/agent-identity.yml", log=work / "play.log")
    assert play.rc == 0, play.output[-4000:]
    return work / "etc" / "agent.yaml"


def test_the_agent_configured_by_the_role_publishes_through_the_broker(
    commune: Commune, server: Client, agent_config: Path
) -> None:
    agent = Path(sys.executable).parent / "edge-agent"
    proc = subprocess.Popen(
        [str(agent), "run", "--config", str(agent_config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with server._cond:
            got = server._cond.wait_for(
                lambda: any(t.endswith("/xd-0001/events") for t, _ in server.messages), 180
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert got, out[-4000:]
    event = next(json.loads(p) for t, p in server.messages if t.endswith("/xd-0001/events"))
    assert event["node_id"] == "xd-0001"
    assert proc.returncode == 0, out[-4000:]
