"""``edge-agent models list|fetch|verify``: the models of the manifest in the model directory.

Exit codes: 0 done; 3 a model was refused (truncated, corrupted, unreachable) or, for
``verify``, an installed model does not match the manifest or the default model is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.tools.models import Manifest, check, install, load_manifest

EXIT_OK, EXIT_REFUSED = 0, 3


def _row(*cols: str) -> str:
    widths = (16, 24, 9)
    return "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False)) + "  " + cols[-1]


def list_models(manifest: Manifest, model_dir: Path) -> int:
    """One line per manifest model: name, file, installed|missing|mismatch, detail."""
    print(f"model directory: {model_dir}")
    for entry in manifest.models:
        c = check(entry, model_dir)
        name = f"{entry.name}*" if entry.name == manifest.default else entry.name
        print(_row(name, entry.file, c.status, f"{c.detail}; {entry.licence}"))
    print("* the default model (detector.model unset)")
    return EXIT_OK


def fetch_models(manifest: Manifest, model_dir: Path, names: list[str], mirror: str | None) -> int:
    """Install the named models (all by default) from ``mirror`` or their pinned URLs."""
    refused = 0
    for entry in manifest.select(names):
        result = install(entry, model_dir, mirror)
        if result.outcome == "refused":
            refused += 1
            print(f"refused {entry.file}: {result.detail}", file=sys.stderr)
        else:
            print(f"{result.outcome} {result.path}: {result.detail}")
    return EXIT_REFUSED if refused else EXIT_OK


def verify_models(manifest: Manifest, model_dir: Path, names: list[str]) -> int:
    """Check what is installed: every present file must match; the named models (by default
    the default model) must be present."""
    required = set(names) if names else {manifest.default}
    bad = 0
    for entry in manifest.select(names):
        c = check(entry, model_dir)
        if c.status == "missing" and entry.name not in required:
            print(f"missing {c.path} (optional)")
            continue
        ok = c.status == "installed"
        bad += not ok
        print(
            f"{'ok' if ok else c.status} {c.path}: {c.detail}",
            file=sys.stdout if ok else sys.stderr,
        )
    return EXIT_REFUSED if bad else EXIT_OK


def run_models(
    action: str, model_dir: Path, manifest_path: Path, names: list[str], mirror: str | None
) -> int:
    manifest = load_manifest(manifest_path)
    if action == "list":
        return list_models(manifest, model_dir)
    if action == "fetch":
        return fetch_models(manifest, model_dir, names, mirror)
    return verify_models(manifest, model_dir, names)
