#!/usr/bin/env bash
# Shared by rpi-image.sh and jetson-rootfs.sh: run the edge_agent role in image mode (no
# identity) against a mounted root filesystem through the community.general.chroot connection.
# shellcheck disable=SC2034  # variables are used by the scripts that source this file

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ANSIBLE_DIR="$REPO/ansible"
MOUNTS=()

die() { echo "${0##*/}: $*" >&2; exit 2; }
need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (loop devices, mounts, chroot)"; }

# The root filesystem's architecture must run here: natively or through qemu-user-static.
check_arch() { # $1 rootfs
  local elf host
  elf=$(od -An -tx1 -j18 -N2 "$1/usr/bin/python3" 2>/dev/null | tr -d ' ') ||
    die "$1/usr/bin/python3 not found: not a root filesystem with Python"
  host=$(uname -m)
  case "$elf" in
    b700) [ "$host" = aarch64 ] || [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
            die "arm64 root filesystem: apt-get install qemu-user-static binfmt-support" ;;
    3e00) [ "$host" = x86_64 ] || die "amd64 root filesystem on a $host machine" ;;
    *) echo "warning: unknown ELF machine $elf in $1/usr/bin/python3" >&2 ;;
  esac
}

# A loop device for partition N of a disk image (offset-based: works without udev, in
# containers too). Prints the device; remember to losetup -d it.
loop_partition() { # $1 image  $2 partition number
  local start sectors
  read -r start sectors < <(partx -g -o START,SECTORS --nr "$2" "$1") ||
    die "$1 has no partition $2"
  losetup -f --show -o $((start * 512)) --sizelimit $((sectors * 512)) "$1"
}

# /proc, /sys, /dev and the host's resolv.conf inside the rootfs (apt needs them), undone by
# unmount_all in reverse order.
bind_system() { # $1 rootfs
  local root=$1 d
  for d in proc sys dev dev/pts; do mkdir -p "$root/$d"; done
  mount -t proc proc "$root/proc" && MOUNTS+=("$root/proc")
  mount -t sysfs sys "$root/sys" && MOUNTS+=("$root/sys")
  mount --bind /dev "$root/dev" && MOUNTS+=("$root/dev")
  mount --bind /dev/pts "$root/dev/pts" && MOUNTS+=("$root/dev/pts")
  if [ -e "$root/etc/resolv.conf" ] || [ -L "$root/etc/resolv.conf" ]; then
    cp -a "$root/etc/resolv.conf" "$root/etc/resolv.conf.edge-agent-saved" 2>/dev/null || true
  fi
  rm -f "$root/etc/resolv.conf"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  RESOLV_ROOT=$root
}

unmount_all() {
  local i
  if [ -n "${RESOLV_ROOT:-}" ]; then
    rm -f "$RESOLV_ROOT/etc/resolv.conf"
    if [ -e "$RESOLV_ROOT/etc/resolv.conf.edge-agent-saved" ] ||
       [ -L "$RESOLV_ROOT/etc/resolv.conf.edge-agent-saved" ]; then
      mv "$RESOLV_ROOT/etc/resolv.conf.edge-agent-saved" "$RESOLV_ROOT/etc/resolv.conf"
    fi
    RESOLV_ROOT=""
  fi
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" || true
  done
  MOUNTS=()
}

# Run playbooks/site.yml in image mode against the rootfs, as a host of GROUP (rpi|jetson)
# merged into the commune's inventory (its group_vars apply: broker, CA, time server).
#   run_image_play ROOTFS GROUP INVENTORY WHEELHOUSE MODELS [extra ansible-playbook args...]
run_image_play() {
  local root=$1 group=$2 inventory=$3 wheelhouse=$4 models=$5 work
  shift 5
  work=$(mktemp -d)
  cat >"$work/image.yml" <<YAML
all:
  children:
    nodes:
      children:
        $group:
          hosts:
            image-build:
              ansible_connection: community.general.chroot
              ansible_host: $root
              ansible_become: false
YAML
  # Image mode: no node id, keys or passwords; the first-boot unit installs the bundle.
  cat >"$work/image-vars.yml" <<YAML
edge_agent_identity: false
edge_agent_wheelhouse: $wheelhouse
edge_agent_model_src_dir: $models
edge_agent_mqtt_client_cert: ""
edge_agent_mqtt_client_key: ""
YAML
  local rc=0
  (cd "$ANSIBLE_DIR" && ansible-playbook -i "$inventory" -i "$work/image.yml" \
     --limit image-build -e "@$work/image-vars.yml" "$@" playbooks/site.yml) || rc=$?
  rm -rf "$work"
  return $rc
}
