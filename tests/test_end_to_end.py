"""The agent end to end: the real CLI, the real model, real footage, a real Mosquitto and a real
subscriber, as the commune server would see it.

one-by-one-person-detection.mp4 shows six visits, counted by hand from a contact sheet of the
clip (a frame every 2 s): people stand by the table at about 6-19 s, 24-45 s, 52-69 s,
76-87 s, 94-119 s and 124-136 s, entering and leaving at the bottom-left edge in between.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import MEDIA, MODELS
from tests.mqtt_support import Mosquitto, Received, Subscriber

CLIP = MEDIA / "one-by-one-person-detection.mp4"
VISITS = 6
BASE = "camnet/test-commune/node-1"


def write_config(tmp_path: Path, port: int, **camera: object) -> Path:
    cam = {"id": "door", "source": str(CLIP), "detect_fps": 5, "realtime": False, **camera}
    cfg = {
        "node_id": "node-1",
        "commune_id": "test-commune",
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 5, "reconnect_max_s": 2},
        "cameras": [cam],
        "detector": {"model": str(MODELS / "yolox_nano_416.onnx")},
        "snapshots": {"max_width": 480},
        "outbox": {"path": str(tmp_path / "data" / "outbox.db")},
        "heartbeat": {"interval_s": 1},
        "shutdown": {"drain_timeout_s": 5},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


def run_agent(config: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_cmd("run", "--config", str(config)), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def events(msgs: list[Received]) -> list[dict]:
    return [json.loads(m.payload) for m in msgs if m.topic == f"{BASE}/events"]


def by_topic(msgs: list[Received], suffix: str) -> list[Received]:
    return [m for m in msgs if m.topic == f"{BASE}/{suffix}"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One run over the whole clip at full speed, watched by a subscriber from the start."""
    tmp = tmp_path_factory.mktemp("e2e")
    broker = Mosquitto(tmp / "broker")
    broker.start()
    sub = Subscriber(broker.port, "camnet/#")
    try:
        config = write_config(tmp, broker.port)
        proc = run_agent(config)
        assert sub.wait_for(lambda ms: any(b'"offline"' in m.payload for m in ms), 10)
        late = Subscriber(broker.port, f"{BASE}/status")  # sees only what is retained
        assert late.wait_for(lambda ms: len(ms) > 0, 5)
        yield proc, sub.messages, late.messages, config
        late.close()
    finally:
        sub.close()
        broker.stop()


def test_agent_exits_zero_with_an_empty_outbox(full_run):
    proc, _, _, config = full_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = subprocess.run(
        agent_cmd("outbox", "stats", "--config", str(config)), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert json.loads(stats.stdout)["depth"] == 0


def test_one_person_event_per_visit(full_run):
    _, msgs, _, _ = full_run
    evs = events(msgs)
    new = [e for e in evs if e["type"] == "new"]
    end = [e for e in evs if e["type"] == "end"]
    assert [e["label"] for e in new] == ["person"] * VISITS
    assert sorted(e["event_id"] for e in new) == sorted(e["event_id"] for e in end)
    assert {e["label"] for e in evs} == {"person"}
    # each visit's messages: new first, end last, revisions counting up
    for eid in {e["event_id"] for e in new}:
        visit = [e for e in evs if e["event_id"] == eid]
        assert visit[0]["type"] == "new"
        assert visit[-1]["type"] == "end"
        assert [e["rev"] for e in visit] == list(range(len(visit)))
        assert visit[-1]["end_ts"] >= visit[0]["start_ts"]


def test_event_messages_follow_the_contract(full_run):
    _, msgs, _, _ = full_run
    evs = events(msgs)
    assert len({e["id"] for e in evs}) == len(evs)
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    for e in evs:
        assert e["schema"] == "camnet.event/1"
        assert e["camera"] == "door"
        assert e["node_id"] == "node-1"
        assert 0 <= e["score"] <= 1
        x1, y1, x2, y2 = e["box"]
        assert 0 <= x1 <= x2 <= 1
        assert 0 <= y1 <= y2 <= 1
        assert (e["end_ts"] is None) == (e["type"] != "end")
        assert e["ts"] > 1.6e9


def test_every_event_has_a_decodable_snapshot(full_run):
    _, msgs, _, _ = full_run
    evs = events(msgs)
    snaps = [m for m in msgs if "/snapshots/" in m.topic]
    with_snap = [e for e in evs if e["has_snapshot"]]
    assert len(snaps) == len(with_snap)
    assert {e["event_id"] for e in evs if e["type"] == "new"} <= {
        m.topic.rsplit("/", 1)[1] for m in snaps
    }
    for m in snaps:
        image = cv2.imdecode(np.frombuffer(m.payload, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        assert image.shape[1] <= 480
        assert m.properties.get("id")
        assert m.properties.get("seq")
    ids = {e["id"] for e in with_snap}
    assert {m.properties["id"].removesuffix(".jpg") for m in snaps} == ids


def test_heartbeats_report_the_pipeline(full_run):
    _, msgs, _, _ = full_run
    beats = [json.loads(m.payload) for m in by_topic(msgs, "heartbeat")]
    assert len(beats) >= 2
    hb = beats[-1]
    assert hb["schema"] == "camnet.heartbeat/1"
    assert hb["version"]
    assert hb["uptime_s"] > 0
    for key in ("cpu_percent", "mem_used_bytes", "disk_free_bytes", "agent_rss_bytes"):
        assert hb["system"][key] is not None
    assert "soc_temp_c" in hb["system"]
    (cam,) = hb["cameras"]
    assert cam["id"] == "door"
    assert isinstance(cam["skipped_no_motion"], int)  # the motion gate and the shared detector
    assert isinstance(cam["dropped_busy"], int)
    busy = [b["cameras"][0] for b in beats if b["cameras"][0]["inference_ms_p50"] is not None]
    assert busy
    assert max(c["fps_detected"] for c in busy) > 0
    assert max(c["fps_in"] for c in busy) > 0
    assert all(c["inference_ms_p95"] >= c["inference_ms_p50"] > 0 for c in busy)
    for key in ("depth", "bytes", "oldest_age_s", "dropped_events", "dropped_snapshots"):
        assert key in hb["outbox"]


def test_status_online_then_offline_retained(full_run):
    _, msgs, late, _ = full_run
    states = [json.loads(m.payload)["state"] for m in by_topic(msgs, "status")]
    assert states[0] == "online"
    assert states[-1] == "offline"
    (retained,) = late
    assert retained.retain
    assert json.loads(retained.payload)["state"] == "offline"


def wait_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen = ""
    while time.monotonic() < deadline:
        chunk = proc.stderr.read()
        if chunk:
            seen += chunk
            if needle in seen:
                return True
        time.sleep(0.1)
    return False


def test_sigkill_leaves_the_retained_offline_will(tmp_path, broker):
    config = write_config(tmp_path, broker.port, realtime=True, loop=True)
    sub = Subscriber(broker.port, f"{BASE}/status")
    proc = subprocess.Popen(agent_cmd("run", "--config", str(config)), stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert sub.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sub.wait_for(lambda ms: b'"offline"' in ms[-1].payload, 15)
    finally:
        proc.kill()
        sub.close()
    late = Subscriber(broker.port, f"{BASE}/status")
    assert late.wait_for(lambda ms: len(ms) > 0, 5)
    assert late.messages[0].retain
    assert json.loads(late.messages[0].payload)["state"] == "offline"
    late.close()


def test_sigterm_ends_open_events_and_exits_zero(tmp_path, broker):
    config = write_config(tmp_path, broker.port, realtime=True, loop=True)
    sub = Subscriber(broker.port, "camnet/#")
    proc = subprocess.Popen(agent_cmd("run", "--config", str(config)), stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        # the first visit starts at about 6.4 s of the clip
        assert sub.wait_for(lambda ms: any(b'"new"' in m.payload for m in ms), 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert sub.wait_for(lambda ms: bool(ms) and b'"offline"' in ms[-1].payload, 10)
    evs = events(sub.messages)
    sub.close()
    assert Counter(e["type"] for e in evs)["end"] == Counter(e["type"] for e in evs)["new"] >= 1


def test_broker_down_mid_run_then_drain_delivers_everything(tmp_path, broker):
    """Every event of a run with the broker stopped part way arrives after ``outbox drain``."""
    config = write_config(tmp_path, broker.port)
    first = Subscriber(broker.port, f"{BASE}/#")
    proc = subprocess.Popen(agent_cmd("run", "--config", str(config)), stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert first.wait_for(lambda ms: len(events(ms)) >= 1, 60)  # some delivered live
        first.close()
        broker.stop()
        assert proc.wait(240) == 0
    finally:
        proc.kill()
    db = sqlite3.connect(tmp_path / "data" / "outbox.db")
    queued = {row[0] for row in db.execute("SELECT msg_id FROM messages WHERE kind='event'")}
    db.close()
    assert queued, "the broker was down for most of the run: events must have been queued"

    broker.start()  # same port
    second = Subscriber(broker.port, f"{BASE}/#")
    drain = subprocess.run(agent_cmd("outbox", "drain", "--config", str(config)),
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert drain.returncode == 0, drain.stderr[-2000:]
    assert second.wait_for(lambda ms: queued <= {e["id"] for e in events(ms)}, 10)
    got = events(first.messages) + events(second.messages)
    second.close()
    seqs = {e["seq"] for e in got}
    assert seqs == set(range(1, max(seqs) + 1)), "a seq gap means an event was lost"
    assert Counter(e["type"] for e in got if e["type"] == "new")["new"] == VISITS


def statuses(msgs: list[Received]) -> list[dict]:
    return [json.loads(m.payload) for m in by_topic(msgs, "status")]


def test_a_crash_leaves_no_visit_open(tmp_path, broker):
    """SIGKILL mid-visit: the next start ends that visit (end_reason restart) before new ones."""
    config = write_config(tmp_path, broker.port, realtime=True, loop=True)
    sub = Subscriber(broker.port, "camnet/#")
    first = subprocess.Popen(agent_cmd("run", "--config", str(config)), stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert sub.wait_for(lambda ms: any(e["type"] == "new" for e in events(ms)), 60)
        first.kill()  # a power cut: the visit is open
        first.wait(10)
    finally:
        first.kill()
    opened = [e for e in events(sub.messages) if e["type"] == "new"]
    open_ids = {e["event_id"] for e in opened} - {
        e["event_id"] for e in events(sub.messages) if e["type"] == "end"
    }
    assert open_ids, "the kill came during a visit"
    second = subprocess.Popen(agent_cmd("run", "--config", str(config)), stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert sub.wait_for(
            lambda ms: open_ids <= {e["event_id"] for e in events(ms) if e["type"] == "end"}, 60
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        second.kill()
    assert sub.wait_for(lambda ms: statuses(ms)[-1]["state"] == "offline", 10)
    evs = events(sub.messages)
    sub.close()
    ends = {e["event_id"]: e for e in evs if e["type"] == "end"}
    for eid in open_ids:
        end = ends[eid]
        assert end["end_reason"] == "restart"
        new = next(e for e in opened if e["event_id"] == eid)
        assert end["rev"] == max(e["rev"] for e in evs if e["event_id"] == eid)
        assert end["start_ts"] == new["start_ts"]
        assert end["end_ts"] >= new["ts"]
        later_news = [e for e in evs if e["type"] == "new" and e["seq"] > new["seq"]]
        assert all(e["seq"] > end["seq"] for e in later_news)  # ended before any new visit
    assert {e["event_id"] for e in evs if e["type"] == "new"} <= set(ends)  # none left open
    onlines = [s for s in statuses(sub.messages) if s["state"] == "online"]
    assert len({s["run_id"] for s in onlines}) == 2
    assert onlines[-1]["restart_ends"] == len(open_ids)
    seqs = sorted({e["seq"] for e in evs})
    assert seqs == list(range(1, seqs[-1] + 1))


def test_refused_snapshots_are_dead_letters_that_a_technician_can_requeue(tmp_path, broker):
    """Snapshots over max_payload_bytes never block events; requeued, they arrive as they were."""
    config = write_config(tmp_path, broker.port)
    cfg = json.loads(config.read_text())
    cfg["mqtt"]["max_payload_bytes"] = 2048  # every JPEG is larger
    cfg["cameras"][0]["source"] = str(MEDIA / "one-by-one-person-detection.mp4")
    config.write_text(json.dumps(cfg))
    sub = Subscriber(broker.port, "camnet/#")
    proc = run_agent(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sub.wait_for(
        lambda ms: bool(statuses(ms)) and statuses(ms)[-1]["state"] == "offline", 10
    )
    evs = events(sub.messages)
    assert Counter(e["type"] for e in evs)["new"] == VISITS  # events flowed
    assert by_topic_prefix(sub.messages, "snapshots/") == []
    listed = subprocess.run(agent_cmd("outbox", "dead-letters", "list", "--config", str(config)),
                            capture_output=True, text=True, check=True)  # fmt: skip
    dead = [json.loads(line) for line in listed.stdout.splitlines()]
    promised = {f"{e['id']}.jpg" for e in evs if e["has_snapshot"]}
    assert {d["msg_id"] for d in dead} == promised
    assert all("max_payload_bytes" in d["reason"] for d in dead)

    env = {**os.environ, "EDGE_AGENT__MQTT__MAX_PAYLOAD_BYTES": "1000000"}
    requeue = subprocess.run(
        agent_cmd("outbox", "dead-letters", "requeue", "--config", str(config)),
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    assert json.loads(requeue.stdout) == {"requeued": len(promised)}
    drain = subprocess.run(
        agent_cmd("outbox", "drain", "--config", str(config)),
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert drain.returncode == 0, drain.stderr[-2000:]
    assert sub.wait_for(lambda ms: len(by_topic_prefix(ms, "snapshots/")) == len(promised), 10)
    snaps = by_topic_prefix(sub.messages, "snapshots/")
    sub.close()
    assert {s.properties["id"] for s in snaps} == promised
    seq_of = {e["id"]: e["seq"] for e in evs}
    assert all(int(s.properties["seq"]) == seq_of[s.properties["id"][:-4]] for s in snaps)
    assert all(cv2.imdecode(np.frombuffer(s.payload, np.uint8), cv2.IMREAD_COLOR) is not None
               for s in snaps)  # fmt: skip


def by_topic_prefix(msgs: list[Received], prefix: str) -> list[Received]:
    return [m for m in msgs if m.topic.startswith(f"{BASE}/{prefix}")]
