"""Helpers for the Ansible tests: the cached controller, root filesystems, playbook runs.

scripts/ansible-deps.sh (called by ``make setup-tests``) caches under
``$EDGE_AGENT_TEST_CACHE`` (default /var/cache/edge-agent-tests): a controller virtualenv
(ansible-core 2.19, ansible-lint, community.general), the agent's dependency wheels for
Debian bookworm's Python 3.11 and a debootstrap bookworm minbase tarball.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
EXAMPLE = ANSIBLE_DIR / "inventories" / "example"
VAULT_ID = "xuan-dinh"
CACHE = Path(os.environ.get("EDGE_AGENT_TEST_CACHE", "/var/cache/edge-agent-tests"))
CONTROLLER = CACHE / "controller"
ROOTFS_TAR = CACHE / "rootfs-bookworm-amd64-v2.tar"  # scripts/ansible-deps.sh ROOTFS_VERSION


def ensure_deps() -> None:
    """Run scripts/ansible-deps.sh (a no-op when everything is cached)."""
    subprocess.run(
        [str(REPO / "scripts" / "ansible-deps.sh")], check=True, timeout=900,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def controller_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{CONTROLLER / 'bin'}:{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(CONTROLLER / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_LOCAL_TEMP=str(CACHE / "ansible-tmp"),
        ANSIBLE_HOME=str(CACHE / "ansible-home"),
        PIP_CONFIG_FILE="/dev/null",
    )
    return env


@dataclass(frozen=True)
class PlayResult:
    rc: int
    output: str
    seconds: float = 0.0

    def recap(self, host: str) -> dict[str, int]:
        """The PLAY RECAP counters of one host (ok, changed, failed, ...)."""
        m = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", self.output, re.MULTILINE)
        assert m, f"no recap for {host}:\n{self.output[-3000:]}"
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}

    def task(self, name: str) -> str:
        """How task ``name`` ended: the first word after its header (``ok``, ``changed``,
        ``skipping``, ``fatal``), or ``""`` if it did not run."""
        head = re.search(rf"^TASK \[[^\]]*{re.escape(name)}\] \**$", self.output, re.M)
        if head is None:
            return ""
        rest = self.output[head.end() :]
        body = re.split(r"^(?:TASK|RUNNING HANDLER|PLAY RECAP) ", rest, maxsplit=1, flags=re.M)
        m = re.search(r"^(ok|changed|skipping|fatal|failed):", body[0], re.M)
        return m.group(1) if m else ""


def run_playbook(
    inventory: Path, playbook: str, *args: str, log: Path, timeout: float = 600
) -> PlayResult:
    cmd = [
        str(CONTROLLER / "bin" / "ansible-playbook"),
        "-i", str(inventory),
        "--vault-id", f"{VAULT_ID}@{inventory.parent / 'vault-password.TEST-ONLY'}",
        str(ANSIBLE_DIR / "playbooks" / playbook), *args,
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ANSIBLE_DIR, env=controller_env(), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    log.write_text(out)
    return PlayResult(proc.returncode, out, time.monotonic() - t0)


def copy_example_inventory(
    dest: Path, host_vars: dict[str, str], group_vars: dict[str, str] | None = None
) -> Path:
    """The example inventory in ``dest`` plus a ``ci.yml`` of extra variables per host/group."""
    shutil.copytree(EXAMPLE, dest)
    for host, text in host_vars.items():
        (dest / "host_vars" / host / "ci.yml").write_text(text)
    for group, text in (group_vars or {}).items():
        (dest / "group_vars" / group / "ci.yml").write_text(text)
    return dest / "hosts.yml"


def _run(*cmd: str, timeout: float = 300) -> str:
    return subprocess.run(
        cmd, check=True, capture_output=True, text=True, timeout=timeout
    ).stdout.strip()


def loop_partition(image: Path, number: int) -> str:
    """A loop device over partition ``number`` of ``image`` (offsets: no udev needed)."""
    start, sectors = _run(
        "partx", "-g", "-o", "START,SECTORS", "--nr", str(number), str(image)
    ).split()
    return _run(
        "losetup", "-f", "--show", "-o", str(int(start) * 512),
        "--sizelimit", str(int(sectors) * 512), str(image),
    )  # fmt: skip


def make_stock_image(image: Path) -> Path:
    """A small stand-in for a stock Raspberry Pi OS image: partition 1 the boot partition,
    partition 2 the bookworm root filesystem (amd64, so no qemu; ext4 boot partition because
    this kernel has no vfat)."""
    _run("truncate", "-s", "700M", str(image))
    subprocess.run(
        ["sfdisk", "-q", str(image)], input="label: dos\n,64M,c\n,,83\n", text=True,
        check=True, timeout=60,
    )  # fmt: skip
    boot, root = loop_partition(image, 1), loop_partition(image, 2)
    mnt = image.parent / "stock-root"
    mnt.mkdir()
    try:
        _run("mkfs.ext4", "-q", "-L", "bootfs", boot)
        _run("mkfs.ext4", "-q", "-L", "rootfs", root)
        _run("mount", root, str(mnt))
        try:
            _run("tar", "-C", str(mnt), "-xf", str(ROOTFS_TAR))
            (mnt / "boot" / "firmware").mkdir(parents=True, exist_ok=True)
        finally:
            _run("umount", str(mnt))
    finally:
        _run("losetup", "-d", boot, root)
        mnt.rmdir()
    return image


class MountedImage:
    """An image's root (partition 2) at ``root`` with its boot partition at boot/firmware."""

    def __init__(self, image: Path, root: Path) -> None:
        self.root = root
        root.mkdir()
        self._loops = [loop_partition(image, 2), loop_partition(image, 1)]
        _run("mount", self._loops[0], str(root))
        _run("mount", self._loops[1], str(root / "boot" / "firmware"))

    def close(self) -> None:
        for path in (self.root / "boot" / "firmware", self.root):
            subprocess.run(["umount", str(path)], check=False, timeout=60)
        subprocess.run(["losetup", "-d", *self._loops], check=False, timeout=60)


def build_wheelhouse(dest: Path) -> Path:
    """The agent's wheel built from this checkout plus the cached dependency wheels."""
    dest.mkdir(parents=True)
    for whl in (CACHE / "wheelhouse").glob("*.whl"):
        os.link(whl, dest / whl.name)
    builder = CACHE / "wheel-builder" / "bin" / "python"
    subprocess.run(
        [str(builder), "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dest), str(REPO)],
        check=True, timeout=300, capture_output=True,
        env={**os.environ, "PIP_CONFIG_FILE": "/dev/null"},
    )  # fmt: skip
    shutil.rmtree(REPO / "build", ignore_errors=True)
    return dest


def in_root(root: Path, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command inside the root filesystem (its own binaries)."""
    return subprocess.run(
        ["chroot", str(root), *cmd], capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
