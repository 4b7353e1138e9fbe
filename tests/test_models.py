"""``edge-agent models``: installing the manifest's models from a mirror (a copy of
../shared/models, or the same served over HTTP on 127.0.0.1), refusing truncated and corrupted
files by name, and ``detect`` / the config finding the installed default model."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import DetectorConfig, load_settings
from agent.tools.models import (
    DEFAULT_MODEL_FILE,
    MANIFEST,
    MODEL_DIR_ENV,
    ModelEntry,
    load_manifest,
    mismatch,
)
from tests.conftest import MEDIA, MODELS

FILES = ("yolox_nano_416.onnx", "picodet_s_320_coco.onnx", "nanodet_m_320.onnx")


@pytest.fixture
def mirror(tmp_path: Path, shared_dir: Path) -> Path:
    """A technician's copy of ../shared/models."""
    out = tmp_path / "mirror"
    out.mkdir()
    for name in FILES:
        shutil.copyfile(MODELS / name, out / name)
    return out


@pytest.fixture
def http_mirror(mirror: Path) -> Iterator[str]:
    """The mirror served over HTTP on 127.0.0.1 (the commune server's model share)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def _quiet_http_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http.server.SimpleHTTPRequestHandler, "log_message", lambda *a: None)


def leftovers(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.startswith("."))


def test_fetch_installs_every_model_from_a_mirror_directory(tmp_path, mirror, capsys):
    model_dir = tmp_path / "models"
    assert main(["models", "fetch", "--dir", str(model_dir), "--from", str(mirror)]) == 0
    for name in FILES:
        assert (model_dir / name).read_bytes() == (MODELS / name).read_bytes()
        assert (model_dir / name).stat().st_mode & 0o777 == 0o644
    assert leftovers(model_dir) == []
    capsys.readouterr()
    assert main(["models", "verify", "--dir", str(model_dir)]) == 0
    assert main(["models", "list", "--dir", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count(" installed ") == 3
    # a second fetch keeps what is intact
    assert main(["models", "fetch", "--dir", str(model_dir), "--from", str(mirror)]) == 0
    assert capsys.readouterr().out.count("kept ") == 3


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100_000])


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))


def _grow(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 10)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_truncate, "truncated: 100000 of"), (_corrupt, "sha256 mismatch"), (_grow, "wrong size")],
)
def test_a_damaged_mirror_file_is_refused_by_name_and_nothing_is_left(
    tmp_path, mirror, capsys, damage, reason
):
    damage(mirror / "picodet_s_320_coco.onnx")
    model_dir = tmp_path / "models"
    assert main(["models", "fetch", "--dir", str(model_dir), "--from", str(mirror)]) == 3
    err = capsys.readouterr().err
    assert "refused picodet_s_320_coco.onnx" in err
    assert reason in err
    assert not (model_dir / "picodet_s_320_coco.onnx").exists()
    assert leftovers(model_dir) == []
    assert (model_dir / "yolox_nano_416.onnx").is_file()  # the good ones were still installed


def test_a_bad_download_never_replaces_and_a_good_one_repairs(tmp_path, mirror, capsys):
    model_dir = tmp_path / "models"
    assert main(["models", "fetch", "yolox_nano_416", "--dir", str(model_dir),
                 "--from", str(mirror)]) == 0  # fmt: skip
    installed = model_dir / "yolox_nano_416.onnx"
    _corrupt(installed)  # bit rot on the box
    capsys.readouterr()
    assert main(["models", "verify", "--dir", str(model_dir)]) == 3
    assert "yolox_nano_416.onnx: sha256 mismatch" in capsys.readouterr().err
    broken_mirror = tmp_path / "broken"
    broken_mirror.mkdir()
    (broken_mirror / "yolox_nano_416.onnx").write_bytes(b"not a model")
    before = installed.read_bytes()
    assert main(["models", "fetch", "yolox_nano_416", "--dir", str(model_dir),
                 "--from", str(broken_mirror)]) == 3  # fmt: skip
    assert installed.read_bytes() == before  # the refused file did not land
    assert main(["models", "fetch", "yolox_nano_416", "--dir", str(model_dir),
                 "--from", str(mirror)]) == 0  # fmt: skip
    assert installed.read_bytes() == (MODELS / "yolox_nano_416.onnx").read_bytes()
    assert main(["models", "verify", "--dir", str(model_dir)]) == 0
    assert leftovers(model_dir) == []


def test_verify_names_a_corrupted_model_and_a_missing_default(tmp_path, mirror, capsys):
    model_dir = tmp_path / "models"
    assert main(["models", "verify", "--dir", str(model_dir)]) == 3
    assert "missing" in capsys.readouterr().err
    assert main(["models", "fetch", "--dir", str(model_dir), "--from", str(mirror)]) == 0
    _truncate(model_dir / "nanodet_m_320.onnx")
    capsys.readouterr()
    assert main(["models", "verify", "--dir", str(model_dir)]) == 3
    err = capsys.readouterr().err
    assert "nanodet_m_320.onnx: truncated" in err
    assert "yolox" not in err


def test_fetch_from_an_http_mirror(tmp_path, http_mirror, mirror, capsys):
    url, model_dir = http_mirror, tmp_path / "models"
    assert main(["models", "fetch", "yolox_nano_416", "--dir", str(model_dir), "--from", url]) == 0
    assert (model_dir / "yolox_nano_416.onnx").read_bytes() == (
        MODELS / "yolox_nano_416.onnx"
    ).read_bytes()
    _truncate(mirror / "nanodet_m_320.onnx")
    (mirror / "picodet_s_320_coco.onnx").unlink()
    capsys.readouterr()
    assert main(["models", "fetch", "--dir", str(model_dir), "--from", url]) == 3
    err = capsys.readouterr().err
    assert "refused nanodet_m_320.onnx" in err
    assert "truncated" in err
    assert "refused picodet_s_320_coco.onnx" in err
    assert "404" in err
    assert leftovers(model_dir) == []


def test_detect_works_without_model_after_fetch(tmp_path, mirror):
    model_dir = tmp_path / "models"
    env = {**os.environ, MODEL_DIR_ENV: str(model_dir), "PYTHONWARNINGS": "ignore"}
    detect = [sys.executable, "-m", "agent.cli", "detect", str(MEDIA / "bus.jpg")]
    before = subprocess.run(detect, capture_output=True, text=True, env=env, check=False)
    assert before.returncode == 3
    assert "edge-agent models fetch" in before.stderr
    assert str(model_dir / DEFAULT_MODEL_FILE) in before.stderr
    fetch = [sys.executable, "-m", "agent.cli", "models", "fetch", "--from", str(mirror)]
    subprocess.run(fetch, capture_output=True, text=True, env=env, check=True)
    after = subprocess.run(detect, capture_output=True, text=True, env=env, check=True)
    labels = [json.loads(line)["label"] for line in after.stdout.splitlines()]
    assert labels.count("bus") == 1


def test_config_without_a_model_uses_the_model_dir(tmp_path, monkeypatch, mirror, capsys):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    assert DetectorConfig().model == Path("/var/lib/edge-agent/models") / DEFAULT_MODEL_FILE
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "env-models"))
    assert DetectorConfig().model == tmp_path / "env-models" / DEFAULT_MODEL_FILE
    assert DetectorConfig(model=Path("/x/m.onnx")).model == Path("/x/m.onnx")
    model_dir = tmp_path / "box-models"
    text = (
        "node_id: n1\ncommune_id: c1\ncameras: [{id: cam, source: rtsp://h/cam}]\n"
        f"detector: {{model_dir: {model_dir}}}\n"
    )
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    assert load_settings(config).detector.model == model_dir / DEFAULT_MODEL_FILE
    assert main(["check-config", str(config)]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("detector.")]
    assert line.startswith("detector.model: model file not found")
    assert "edge-agent models fetch" in line
    assert main(["models", "fetch", "--dir", str(model_dir), "--from", str(mirror)]) == 0
    assert main(["check-config", str(config)]) == 0


def test_the_config_default_is_the_manifest_default():
    manifest = load_manifest(MANIFEST)
    assert manifest.default_entry.file == DEFAULT_MODEL_FILE
    assert {m.file for m in manifest.models} == set(FILES)


ENTRY = ModelEntry("m", "m.onnx", "yolox", "https://x/m.onnx", "ab" * 32, 100, "MIT")


@pytest.mark.parametrize(
    ("size", "sha", "expected"),
    [
        (100, "ab" * 32, None),
        (99, "ab" * 32, "truncated: 99 of 100 bytes"),
        (0, "ab" * 32, "truncated: 0 of 100 bytes"),
        (101, "ab" * 32, "wrong size: 101 bytes, expected 100"),
        (100, "cd" * 32, "sha256 mismatch: cdcdcdcdcdcdcdcd..., expected abababababababab..."),
    ],
)
def test_mismatch(size, sha, expected):
    assert mismatch(ENTRY, size, sha) == expected


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ({"file": "../evil.onnx"}, "plain file name"),
        ({"sha256": "xyz"}, "bad sha256"),
        ({"bytes": None}, "bad model entry"),
    ],
)
def test_a_bad_manifest_is_a_config_error(tmp_path, edit, reason, capsys):
    raw = json.loads(MANIFEST.read_text())
    raw["models"][0].update(edit)
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(raw))
    assert main(["models", "list", "--manifest", str(bad), "--dir", str(tmp_path)]) == 2
    assert reason in capsys.readouterr().err
