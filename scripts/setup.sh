#!/usr/bin/env bash
# Everything the agent needs on a fresh Debian / Ubuntu / Raspberry Pi OS machine:
# the apt packages (mosquitto; with --tests also a real RTSP server, GStreamer tools and
# decoders, ffmpeg, and faketime for the clock-jump tests)
# and a virtualenv in .venv with the agent installed editable. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
with_tests=0
[ "${1:-}" = "--tests" ] && with_tests=1
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
python3 -c "import venv, ensurepip" 2>/dev/null || pkgs+=(python3-venv)
if [ "$with_tests" = 1 ]; then
  /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null \
    || pkgs+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp
              gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
  command -v gst-launch-1.0 >/dev/null 2>&1 || pkgs+=(gstreamer1.0-tools)
  command -v ffmpeg >/dev/null 2>&1 || pkgs+=(ffmpeg)  # decoder: ffmpeg
  gst-inspect-1.0 avdec_h264 >/dev/null 2>&1 || pkgs+=(gstreamer1.0-libav)  # software H.264
  command -v faketime >/dev/null 2>&1 || pkgs+=(faketime)  # clock-jump fault tests
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "setup: installing ${pkgs[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the agent and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The Ansible tests (tests/test_ansible.py): debootstrap, openssl, shellcheck, a controller
# virtualenv, the dependency wheels and a bookworm root filesystem, cached between runs.
if [ "$with_tests" = 1 ]; then
  scripts/ansible-deps.sh
fi
