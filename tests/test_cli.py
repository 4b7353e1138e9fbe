"""The command line: check-config's exit codes and messages, env overrides, detect's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from agent.cli import main
from agent.config import load_settings, read_secret
from agent.errors import ConfigError
from tests.conftest import MEDIA, MODELS

GOOD = f"""
node_id: xd-0017
commune_id: xuan-dinh
mqtt: {{host: 127.0.0.1, port: 1883, username: node, password: s3cret-pw, topic_prefix: camnet}}
cameras:
  - id: gate
    source: rtsp://user:pass@192.168.1.64:554/Streaming/Channels/102
    detect_fps: 5
detector: {{model: {MODELS / "yolox_nano_416.onnx"}, family: auto, threads: 2, min_score: 0.5}}
events: {{end_timeout_s: 4}}
snapshots: {{enabled: true, max_width: 640, quality: 70}}
outbox: {{path: /tmp/edge-agent-test/outbox.db, max_bytes: 268435456}}
heartbeat: {{interval_s: 30}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_check_config_accepts_the_documented_example(tmp_path, capsys):
    assert main(["check-config", str(write(tmp_path, GOOD))]) == 0
    assert "ok" in capsys.readouterr().out


def test_example_config_in_the_repo_is_valid(capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "agent.yaml"
    settings = load_settings(example)
    assert settings.node_id
    assert settings.cameras


@pytest.mark.parametrize(
    ("edit", "field", "reason"),
    [
        (("detect_fps: 5", "detect_fps: 0"), "cameras.0.detect_fps", "greater than 0"),
        (("node_id: xd-0017", "node_id: XD 17"), "node_id", "should match pattern"),
        (("port: 1883", "port: 99999"), "mqtt.port", "less than or equal to 65535"),
        (("topic_prefix: camnet}", "topic_prefix: camnet, colour: red}"), "mqtt.colour",
         "Extra inputs are not permitted"),
        (("min_score: 0.5", "min_score: 0.5, labels: [person, unicorn]"), "detector",
         "unicorn"),
        (("family: auto", "family: ssd"), "detector.family", "Input should be"),
        (("- id: gate", "- id: Gate!"), "cameras.0.id", "should match pattern"),
        (("detect_fps: 5", "detect_fps: 5\n    motion: {masks: [[[0, 0], [1.5, 0], [0, 1]]]}"),
         "cameras.0.motion.masks.0", "point 1 [1.5, 0.0] is outside the frame"),
        (("detect_fps: 5", "detect_fps: 5\n    motion: {masks: [[[0, 0], [1, 1]]]}"),
         "cameras.0.motion.masks.0", "at least 3 points"),
        (("detect_fps: 5", "detect_fps: 5\n    motion: {masks: [[[0, 0], [0.5, 0.5], [1, 1]]]}"),
         "cameras.0.motion.masks.0", "no area"),
        (("detect_fps: 5", "detect_fps: 5\n    motion: {confirm_interval_s: 5}"), "(root)",
         "confirm_interval_s must be below events.end_timeout_s"),
        (("threads: 2", "threads: 2, graph_optimization: turbo"), "detector.graph_optimization",
         "Input should be"),
        (("threads: 2", "threads: 2, max_fps: 0"), "detector.max_fps", "greater than 0"),
    ],
)  # fmt: skip
def test_check_config_names_the_field_and_reason(tmp_path, capsys, edit, field, reason):
    old, new = edit
    assert old in GOOD
    assert main(["check-config", str(write(tmp_path, GOOD.replace(old, new)))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{field}")
    assert reason in lines[0]


def test_check_config_reports_every_problem_one_line_each(tmp_path, capsys):
    bad = GOOD.replace("detect_fps: 5", "detect_fps: -1").replace("port: 1883", "port: 0")
    assert main(["check-config", str(write(tmp_path, bad))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in err] == ["mqtt.port", "cameras.0.detect_fps"]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("node_id: [unclosed", None),
        ("commune_id: x\ncameras: []\n", "node_id"),
    ],
)
def test_check_config_bad_yaml_or_missing_keys_exit_2(tmp_path, capsys, text, field):
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if field:
        assert f"{field}: Field required" in err
        assert "cameras: List should have at least 1 item after validation, not 0" in err
    else:
        assert len(err) == 1
        assert "cannot parse YAML at line 1, column 19" in err[0]


def test_check_config_missing_files_are_problems(tmp_path, capsys):
    text = GOOD.replace(str(MODELS / "yolox_nano_416.onnx"), str(tmp_path / "nope.onnx"))
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert "detector.model: model file not found" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "absent.yaml")]) == 2


def test_env_overrides_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("EDGE_AGENT__MQTT__PORT", "8883")
    monkeypatch.setenv("EDGE_AGENT__EVENTS__END_TIMEOUT_S", "9.5")
    monkeypatch.setenv("EDGE_AGENT__NODE_ID", "xd-0099")
    s = load_settings(path)
    assert (s.mqtt.port, s.events.end_timeout_s, s.node_id) == (8883, 9.5, "xd-0099")
    assert s.mqtt.host == "127.0.0.1"  # the rest still comes from the file
    monkeypatch.setenv("EDGE_AGENT__MQTT__PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.problems[0][0] == "mqtt.port"


def test_password_file_and_secrets_never_printed(tmp_path, capsys):
    secret = tmp_path / "mqtt.pw"
    secret.write_text("from-a-file\n")
    text = GOOD.replace("password: s3cret-pw", f"password_file: {secret}")
    s = load_settings(write(tmp_path, text))
    assert read_secret(s.mqtt.password, s.mqtt.password_file) == "from-a-file"
    both = GOOD.replace("password: s3cret-pw", f"password: x, password_file: {secret}")
    assert main(["check-config", str(write(tmp_path, both))]) == 2
    assert "password or password_file" in capsys.readouterr().err
    s = load_settings(write(tmp_path, GOOD))
    assert "s3cret-pw" not in repr(s)
    assert "s3cret-pw" not in str(s.model_dump())


def test_detect_prints_json_lines_and_annotates(tmp_path):
    out = tmp_path / "bus-annotated.jpg"
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "detect", str(MEDIA / "bus.jpg"),
         "--model", str(MODELS / "yolox_nano_416.onnx"), "--annotate", str(out)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    labels = [d["label"] for d in lines]
    assert labels.count("bus") == 1
    assert labels.count("person") >= 3
    for d in lines:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2
        assert 0 <= y1 < y2
        assert 0 < d["score"] <= 1
    original, annotated = cv2.imread(str(MEDIA / "bus.jpg")), cv2.imread(str(out))
    assert annotated.shape == original.shape
    assert (annotated != original).any()


def test_detect_on_a_clip_every_nth_frame(capsys):
    assert main(["detect", str(MEDIA / "degirum_Car.mp4"), "--every", "2",
                 "--model", str(MODELS / "picodet_s_320_coco.onnx")]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {d["frame"] for d in lines} <= {0, 2}
    assert "car" in {d["label"] for d in lines}


def test_corrupt_model_is_refused_with_exit_3(tmp_path, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes((MODELS / "yolox_nano_416.onnx").read_bytes()[:5000])
    assert main(["detect", str(MEDIA / "bus.jpg"), "--model", str(bad)]) == 3
    assert "broken.onnx" in capsys.readouterr().err
