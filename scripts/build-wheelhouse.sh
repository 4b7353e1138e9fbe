#!/usr/bin/env bash
# The agent's wheel and every dependency wheel, for nodes without internet:
#   scripts/build-wheelhouse.sh [OUT] [PYTHON]                 wheels for this machine
#   scripts/build-wheelhouse.sh --target aarch64 PYVER [OUT]   binary wheels for an arm64 node,
#                                                              e.g. --target aarch64 3.11
# OUT defaults to dist/wheelhouse (the edge_agent role's default edge_agent_wheelhouse).
# The node's Python decides: Debian / Raspberry Pi OS bookworm have 3.11, JetPack 6 has 3.10.
# With --target, every dependency must exist as a manylinux wheel (they do today); otherwise
# run the first form on an arm64 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
target="" pyver=""
if [ "${1:-}" = "--target" ]; then
  target=${2:?--target ARCH PYVER [OUT]}; pyver=${3:?--target ARCH PYVER [OUT]}; shift 3
fi
OUT=${1:-dist/wheelhouse}
PYTHON=${2:-/usr/bin/python3}
work=$(mktemp -d)
trap 'rm -rf "$work" build' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip wheel 'setuptools>=77'
mkdir -p "$OUT"
rm -f "$OUT"/edge_agent-*.whl
if [ -z "$target" ]; then
  "$work/venv/bin/pip" wheel -q -w "$OUT" .
else
  "$work/venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$OUT" .
  abi="cp${pyver/./}"
  "$work/venv/bin/python" -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    >"$work/requirements.txt"
  "$work/venv/bin/pip" download -q --only-binary=:all: --implementation cp \
    --python-version "$pyver" --abi "$abi" --abi abi3 --abi none \
    --platform "manylinux_2_28_$target" --platform "manylinux_2_27_$target" \
    --platform "manylinux_2_17_$target" --platform "manylinux2014_$target" --platform any \
    -d "$OUT" -r "$work/requirements.txt"
fi
rm -rf ./*.egg-info
ls -1 "$OUT"
