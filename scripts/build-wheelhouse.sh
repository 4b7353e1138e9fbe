#!/usr/bin/env bash
# The agent's wheel and every dependency wheel, for nodes without internet:
#   scripts/build-wheelhouse.sh [OUT] [PYTHON]
# OUT defaults to dist/wheelhouse (the edge_agent role's default edge_agent_wheelhouse);
# PYTHON must be the node's Python version on the node's architecture (Debian bookworm and
# Raspberry Pi OS bookworm: 3.11; JetPack 6: 3.10). For an arm64 node, run this on an arm64
# machine (or under qemu-user in an arm64 root filesystem).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist/wheelhouse}
PYTHON=${2:-/usr/bin/python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip wheel
mkdir -p "$OUT"
rm -f "$OUT"/edge_agent-*.whl
"$work/venv/bin/pip" wheel -q -w "$OUT" .
rm -rf build ./*.egg-info
ls -1 "$OUT"
