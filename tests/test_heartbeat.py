"""Heartbeats: built from the probe, never queued, skipped and counted while disconnected."""

from __future__ import annotations

import json
import time

import pytest

from agent.node.heartbeat import (
    Heartbeat,
    HeartbeatThread,
    LinkHeartbeat,
    OutboxHeartbeat,
    PsutilProbe,
)
from agent.vision.metrics import PipelineCounters
from tests.fakes import FakeLink, FakeProbe


def collect_with(probe):
    def collect(skipped: int) -> Heartbeat:
        return Heartbeat(
            node_id="n1", run_id="r1", ts=1.7e9, clock_synced=True, uptime_s=5.0,
            version="0.1.0", system=probe.sample(), cameras=(),
            outbox=OutboxHeartbeat(0, 0, 0, 0, 0, None, 0, 0, 0, 0, 0, 0, 0),
            link=LinkHeartbeat(True, 1, 0, skipped, 0, 0, 0, None),
        )  # fmt: skip

    return collect


def test_heartbeat_published_with_schema_and_fields():
    link, probe = FakeLink(), FakeProbe()
    hb = HeartbeatThread(collect_with(probe), link, "camnet/c/n1/heartbeat", interval_s=30, qos=0)
    assert hb.beat()
    ((_, topic, payload, qos, _),) = link.sent
    body = json.loads(payload)
    assert topic == "camnet/c/n1/heartbeat"
    assert qos == 0
    assert body["schema"] == "camnet.heartbeat/1"
    assert body["system"]["soc_temp_c"] == 48.5
    assert body["link"]["heartbeats_skipped"] == 0


def test_heartbeats_are_skipped_not_queued_while_disconnected():
    link = FakeLink(connected=False)
    hb = HeartbeatThread(collect_with(FakeProbe()), link, "t", interval_s=30, qos=1)
    assert not hb.beat()  # still connecting at start: not an outage, not counted
    assert hb.skipped == 0
    link.connected = True
    assert hb.beat()
    link.connected = False
    assert not hb.beat()
    assert not hb.beat()
    assert len(link.sent) == 1
    link.connected = True
    assert hb.beat()
    assert len(link.sent) == 2  # only the latest, carrying the count of the skipped ones
    assert json.loads(link.sent[1][2])["link"]["heartbeats_skipped"] == 2


def test_heartbeat_thread_waits_for_the_first_connection():
    link = FakeLink(connected=False)
    hb = HeartbeatThread(collect_with(FakeProbe()), link, "t", interval_s=0.05, qos=0)
    hb.start()
    try:
        time.sleep(0.3)
        assert link.sent == []
        assert hb.skipped == 0
        link.connected = True
        t0 = time.monotonic()
        while not link.sent and time.monotonic() - t0 < 5:
            time.sleep(0.02)
    finally:
        hb.stop()
    assert link.sent
    assert json.loads(link.sent[0][2])["link"]["heartbeats_skipped"] == 0


def test_heartbeat_thread_beats_on_its_interval():
    link = FakeLink()
    hb = HeartbeatThread(collect_with(FakeProbe()), link, "t", interval_s=1.0, qos=0)
    hb.start()
    try:
        t0 = time.monotonic()
        while len(link.sent) < 2 and time.monotonic() - t0 < 5:
            time.sleep(0.05)
    finally:
        hb.stop()
    assert len(link.sent) >= 2
    assert hb.errors == 0


def test_real_probe_reads_this_machine(tmp_path):
    stats = PsutilProbe(tmp_path).sample()
    assert 0 <= stats.cpu_percent <= 100 * 64
    assert 0 < stats.mem_used_bytes < stats.mem_total_bytes
    assert stats.agent_rss_bytes > 10 << 20
    assert stats.disk_free_bytes is not None
    assert stats.disk_free_bytes > 0


@pytest.mark.parametrize(
    ("times_ms", "p50", "p95"),
    [([10.0] * 20, 10.0, 10.0), (list(range(1, 101)), 50.5, 95.05)],
)
def test_pipeline_counters_percentiles_and_rate(times_ms, p50, p95):
    c = PipelineCounters(window=200, rate_window_s=100)
    for i, ms in enumerate(times_ms):
        c.detected(now=i * 0.2, inference_ms=ms)
    s = c.snapshot(now=(len(times_ms) - 1) * 0.2)
    assert s.inference_ms_p50 == pytest.approx(p50)
    assert s.inference_ms_p95 == pytest.approx(p95)
    assert s.fps_detected == pytest.approx(5.0)
    assert s.frames_detected == len(times_ms)


def test_pipeline_counters_forget_old_rates():
    c = PipelineCounters(rate_window_s=10)
    for i in range(50):
        c.detected(now=i * 0.2, inference_ms=5)
    assert c.snapshot(now=100.0).fps_detected == 0.0
