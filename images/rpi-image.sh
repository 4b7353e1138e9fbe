#!/usr/bin/env bash
# A shared, flashable Raspberry Pi OS image with edge-agent installed and no node identity.
#
#   images/rpi-image.sh -i INVENTORY -w WHEELHOUSE [-m MODELS] [-g GROW] STOCK.img[.xz] OUT.img \
#       [-- extra ansible-playbook args, e.g. --vault-id xuan-dinh@prompt]
#
#   INVENTORY   the commune's hosts.yml (its group_vars: broker, CA, time server)
#   WHEELHOUSE  the agent's wheel and its dependencies for the Pi (arm64, Python 3.11):
#               scripts/build-wheelhouse.sh --target aarch64 3.11 OUT
#   MODELS      folder with the model files (default ../shared/models)
#   GROW        space added to the root partition (default 1G; the venv needs about 400 MB)
#
# Loop-mounts a copy of the stock image (partition 1: /boot/firmware, 2: /), runs
# ansible/playbooks/site.yml against it through the chroot connection (an arm64 image on an
# x86 machine needs qemu-user-static), and leaves OUT.img ready to flash. Each node then gets
# its identity from a bundle on the boot partition (see images/README.md).
set -euo pipefail
# shellcheck source=images/lib.sh
. "$(dirname "$0")/lib.sh"

inventory="" wheelhouse="" models="$REPO/../shared/models" grow=1G
while getopts "i:w:m:g:h" opt; do
  case "$opt" in
    i) inventory=$(realpath "$OPTARG") ;;
    w) wheelhouse=$(realpath "$OPTARG") ;;
    m) models=$(realpath "$OPTARG") ;;
    g) grow=$OPTARG ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || { sed -n '2,17p' "$0"; exit 2; }
stock=$1 out=$2
shift 2
[ "${1:-}" != "--" ] || shift
[ -f "$inventory" ] || die "-i INVENTORY (a commune's hosts.yml) is required"
[ -d "$wheelhouse" ] || die "-w WHEELHOUSE (a folder of wheels) is required"
[ -f "$stock" ] || die "no image $stock"
need_root
command -v ansible-playbook >/dev/null || die "ansible-playbook not found (scripts/ansible-deps.sh controller)"

echo "copying $stock to $out"
case "$stock" in
  *.xz) xz -dc "$stock" >"$out" ;;
  *) cp --sparse=always "$stock" "$out" ;;
esac
if [ "$grow" != 0 ]; then
  truncate -s "+$grow" "$out"
  echo ", +" | sfdisk -q --no-reread -N 2 "$out"
fi

BOOT_LOOP="" ROOT_LOOP="" MNT=$(mktemp -d)
cleanup() {
  unmount_all
  umount "$MNT/boot/firmware" 2>/dev/null || true
  umount "$MNT" 2>/dev/null || true
  [ -z "$BOOT_LOOP" ] || losetup -d "$BOOT_LOOP"
  [ -z "$ROOT_LOOP" ] || losetup -d "$ROOT_LOOP"
  rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT
ROOT_LOOP=$(loop_partition "$out" 2)
BOOT_LOOP=$(loop_partition "$out" 1)
if [ "$grow" != 0 ]; then
  e2fsck -fp "$ROOT_LOOP" >/dev/null || [ $? -le 1 ]
  resize2fs "$ROOT_LOOP" >/dev/null 2>&1
fi
mount "$ROOT_LOOP" "$MNT"
mkdir -p "$MNT/boot/firmware"
mount "$BOOT_LOOP" "$MNT/boot/firmware"
check_arch "$MNT"
bind_system "$MNT"
run_image_play "$MNT" rpi "$inventory" "$wheelhouse" "$models" "$@"
echo "done: $out (flash it, then put the node's bundle in bootfs/edge-agent/)"
