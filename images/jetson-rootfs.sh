#!/usr/bin/env bash
# edge-agent in a Jetson's L4T root filesystem before flashing, with no node identity.
#
#   images/jetson-rootfs.sh -i INVENTORY -w WHEELHOUSE [-m MODELS] Linux_for_Tegra \
#       [-- extra ansible-playbook args, e.g. --vault-id xuan-dinh@prompt]
#
#   Linux_for_Tegra  the unpacked L4T release, with the sample root filesystem in rootfs/ and
#                    `sudo ./apply_binaries.sh` already run
#   WHEELHOUSE       the agent's wheel and its dependencies for the Jetson (arm64; JetPack 6:
#                    Python 3.10): scripts/build-wheelhouse.sh --target aarch64 3.10 OUT
#
# Runs ansible/playbooks/site.yml against rootfs/ as a host of group jetson through the chroot
# connection (qemu-user-static on an x86 machine), then flash as usual, e.g.
#   cd Linux_for_Tegra && sudo ./flash.sh jetson-orin-nano-devkit internal
# Identity: a bundle in /boot/edge-agent/ (scp it after the first boot) or an identity-only run
# over SSH (ansible-playbook ... playbooks/site.yml --tags identity -l NODE).
set -euo pipefail
# shellcheck source=images/lib.sh
. "$(dirname "$0")/lib.sh"

inventory="" wheelhouse="" models="$REPO/../shared/models"
while getopts "i:w:m:h" opt; do
  case "$opt" in
    i) inventory=$(realpath "$OPTARG") ;;
    w) wheelhouse=$(realpath "$OPTARG") ;;
    m) models=$(realpath "$OPTARG") ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,19p' "$0"; exit 2; }
l4t=$(realpath "$1")
shift
[ "${1:-}" != "--" ] || shift
[ -f "$inventory" ] || die "-i INVENTORY (a commune's hosts.yml) is required"
[ -d "$wheelhouse" ] || die "-w WHEELHOUSE (a folder of wheels) is required"
[ -d "$l4t/rootfs/usr" ] || die "$l4t/rootfs is not a root filesystem (unpack the sample rootfs)"
[ -f "$l4t/flash.sh" ] || echo "warning: no flash.sh in $l4t: is it Linux_for_Tegra?" >&2
need_root
command -v ansible-playbook >/dev/null || die "ansible-playbook not found (scripts/ansible-deps.sh controller)"

trap unmount_all EXIT
check_arch "$l4t/rootfs"
bind_system "$l4t/rootfs"
run_image_play "$l4t/rootfs" jetson "$inventory" "$wheelhouse" "$models" \
  -e edge_agent_provision_dir=/boot/edge-agent "$@"
echo "done: $l4t/rootfs provisioned (image mode); flash it with flash.sh"
