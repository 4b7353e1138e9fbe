#!/usr/bin/env bash
# What the Ansible tests (tests/test_ansible.py) need, cached between runs under
# $EDGE_AGENT_TEST_CACHE (default /var/cache/edge-agent-tests). Safe to run again.
#   - apt: debootstrap, openssl, shellcheck, mosquitto-clients, fdisk, dosfstools, podman, runc
#   - a controller virtualenv (ansible-core 2.19.x + ansible-lint), separate from .venv
#   - community.general and ansible.posix taken out of the `ansible` wheel on PyPI
#     (Galaxy is unreachable from here)
#   - the agent's dependency wheels for the target's Python (Debian bookworm: 3.11)
#   - a debootstrap bookworm minbase root filesystem as a tarball
# Usage: scripts/ansible-deps.sh [apt|controller|wheels|rootfs|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${EDGE_AGENT_TEST_CACHE:-/var/cache/edge-agent-tests}
ANSIBLE_CORE_SPEC='ansible-core>=2.19,<2.20'
ANSIBLE_LINT_SPEC='ansible-lint>=25,<27'
ANSIBLE_PKG_VERSION=12.3.0          # the community package: only a source of collections
SUITE=bookworm
TARGET_PYTHON=/usr/bin/python3      # the same Python 3.11 as the bookworm rootfs
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
mkdir -p "$CACHE"

apt_deps() {
  local pkgs=()
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || pkgs+=(debootstrap)
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  command -v shellcheck >/dev/null 2>&1 || pkgs+=(shellcheck)
  command -v mosquitto_sub >/dev/null 2>&1 || pkgs+=(mosquitto-clients)
  # images/rpi-image.sh (and its test on a small made-up disk image)
  command -v sfdisk >/dev/null 2>&1 || [ -x /usr/sbin/sfdisk ] || pkgs+=(fdisk)
  command -v mkfs.vfat >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.vfat ] || pkgs+=(dosfstools)
  command -v resize2fs >/dev/null 2>&1 || [ -x /usr/sbin/resize2fs ] || pkgs+=(e2fsprogs)
  command -v xz >/dev/null 2>&1 || pkgs+=(xz-utils)
  # boot the provisioned rootfs with systemd as PID 1 (podman works here with runc only)
  command -v podman >/dev/null 2>&1 || pkgs+=(podman)
  command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || pkgs+=(runc)
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
  "$TARGET_PYTHON" -c "import venv, ensurepip" 2>/dev/null || pkgs+=(python3-venv)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    echo "ansible-deps: installing ${pkgs[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
      --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
}

controller() {
  local stamp_id venv
  stamp_id=$(printf '%s\n' "$ANSIBLE_CORE_SPEC" "$ANSIBLE_LINT_SPEC" "$ANSIBLE_PKG_VERSION" \
             | sha256sum | cut -c1-12)
  venv="$CACHE/controller-$stamp_id"
  if [ ! -f "$venv/.complete" ]; then
    echo "ansible-deps: controller venv $venv (ansible-core, ansible-lint, collections)"
    rm -rf "$venv"
    "$TARGET_PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "$ANSIBLE_CORE_SPEC" "$ANSIBLE_LINT_SPEC"
    "$venv/bin/pip" download -q --no-deps "ansible==$ANSIBLE_PKG_VERSION" -d "$venv/dl"
    "$venv/bin/python" - "$venv" "$ANSIBLE_PKG_VERSION" <<'PY'
import glob, sys, zipfile
venv, ver = sys.argv[1], sys.argv[2]
whl = zipfile.ZipFile(glob.glob(f"{venv}/dl/ansible-{ver}-py3-none-any.whl")[0])
want = ("ansible_collections/community/general/", "ansible_collections/ansible/posix/")
whl.extractall(f"{venv}/collections", [m for m in whl.namelist() if m.startswith(want)])
PY
    rm -rf "$venv/dl"
    touch "$venv/.complete"
  fi
  ln -sfn "$venv" "$CACHE/controller"
}

wheels() {
  # Dependency wheels only (the agent's own wheel is built by the test from the checkout).
  local stamp_id dir
  # keyed by the runtime dependencies and the Python version (not by dev tools)
  stamp_id=$("$TARGET_PYTHON" -c 'import sys, tomllib
print(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sys.version_info[:2])' \
             | sha256sum | cut -c1-12)
  dir="$CACHE/wheelhouse-$stamp_id"
  if [ ! -f "$dir/.complete" ]; then
    echo "ansible-deps: dependency wheels for $("$TARGET_PYTHON" -V) in $dir"
    rm -rf "$dir" "$CACHE/wheelvenv"
    "$TARGET_PYTHON" -m venv "$CACHE/wheelvenv"
    "$CACHE/wheelvenv/bin/pip" install -q --upgrade pip wheel
    "$CACHE/wheelvenv/bin/pip" wheel -q -w "$dir" .
    rm -f "$dir"/edge_agent-*.whl
    rm -rf "$CACHE/wheelvenv" build ./*.egg-info
    touch "$dir/.complete"
    find "$CACHE" -maxdepth 1 -name 'wheelhouse-*' ! -name "wheelhouse-$stamp_id" -exec rm -rf {} +
  fi
  ln -sfn "$dir" "$CACHE/wheelhouse"
  # builds the agent's own wheel offline at test time (pip wheel --no-build-isolation)
  if [ ! -f "$CACHE/wheel-builder/.complete" ]; then
    rm -rf "$CACHE/wheel-builder"
    "$TARGET_PYTHON" -m venv "$CACHE/wheel-builder"
    "$CACHE/wheel-builder/bin/pip" install -q --upgrade pip 'setuptools>=77' wheel
    touch "$CACHE/wheel-builder/.complete"
  fi
}

# The packages the edge_agent role installs, downloaded into the rootfs's apt cache now so
# that the test installs them without any network (the role runs with update_cache off there).
ROLE_DEBS="python3-venv systemd-timesyncd"
ROOTFS_VERSION=2   # bump when what goes into the tarball changes

rootfs() {
  local tarball="$CACHE/rootfs-$SUITE-amd64-v$ROOTFS_VERSION.tar" mirror tmp
  [ -f "$tarball" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "ansible-deps: not root, no root filesystem (the chroot tests need root)" >&2
    return 0
  fi
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  tmp=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  echo "ansible-deps: debootstrap $SUITE minbase from $mirror (about a minute)"
  if ! debootstrap --variant=minbase --include=python3,python3-apt,systemd,systemd-sysv \
       "$SUITE" "$tmp/root" "$mirror" >"$CACHE/debootstrap.log" 2>&1; then
    echo "ansible-deps: debootstrap failed, see $CACHE/debootstrap.log" >&2
    rm -rf "$tmp"; return 1
  fi
  rm -f "$tmp/root/var/cache/apt/archives/"*.deb
  # shellcheck disable=SC2086  # a list of package names
  if ! { chroot "$tmp/root" apt-get update -qq &&
         chroot "$tmp/root" apt-get install -qq -y --download-only --no-install-recommends \
           $ROLE_DEBS; } >>"$CACHE/debootstrap.log" 2>&1; then
    echo "ansible-deps: downloading $ROLE_DEBS into the rootfs failed, see $CACHE/debootstrap.log" >&2
    rm -rf "$tmp"; return 1
  fi
  tar -C "$tmp/root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  rm -rf "$tmp"
  find "$CACHE" -maxdepth 1 -name "rootfs-$SUITE-amd64*.tar" ! -name "${tarball##*/}" -delete
}

case "${1:-all}" in
  apt) apt_deps ;;
  controller) controller ;;
  wheels) wheels ;;
  rootfs) rootfs ;;
  all) apt_deps; controller; wheels; rootfs ;;
  *) echo "usage: $0 [apt|controller|wheels|rootfs|all]" >&2; exit 2 ;;
esac
