"""The publisher's rules, stepped by hand against the link fake and a real outbox file."""

from __future__ import annotations

import json
import random

import pytest

from agent.config import MqttConfig, OutboxConfig
from agent.contract import Topics
from agent.delivery.outbox import Outbox, OutMessage
from agent.delivery.publisher import Publisher, classify_refusal
from tests.fakes import FakeLink


@pytest.fixture
def outbox(tmp_path):
    box = Outbox.open(OutboxConfig(path=tmp_path / "outbox.db"))
    yield box
    box.close()


def put(outbox: Outbox, n: int, size: int = 10) -> None:
    """``n`` event rows; row k's payload is ``p{k}`` padded with x to ``size`` bytes."""
    for _ in range(n):
        k = outbox.stats().last_seq
        body = f"p{k}".encode().ljust(size, b"x")
        outbox.put([OutMessage("event", "t/events", body, 1, f"m{k}", f"e{k}")])


TOPICS = Topics("camnet", "c", "n")


def make(outbox, link, **cfg) -> Publisher:
    return Publisher(outbox, link, MqttConfig(**cfg), TOPICS, ack_batch=1, ack_delay_s=0.0)


def ids(link: FakeLink) -> list[bytes]:
    return [payload for _, _, payload, _, _ in link.sent]


def test_window_bounds_what_is_handed_to_the_link(outbox):
    put(outbox, 10)
    link = FakeLink(inflight=4)
    pub = make(outbox, link)
    pub.step()
    assert len(link.sent) == 4
    pub.step()
    assert len(link.sent) == 4  # nothing acked: the window stays full
    link.ack(1)
    link.ack(2)
    pub.step()
    assert len(link.sent) == 6
    assert outbox.stats().depth == 8
    # exactly the two acked rows are gone
    assert [r.msg_id for r in outbox.peek(0, 20)] == [f"m{k}" for k in range(2, 10)]


def test_rows_go_out_in_creation_order_and_are_deleted_only_on_puback(outbox):
    for i in range(5):
        outbox.put([OutMessage("event", "t/events", f"p{i}".encode(), 1, f"m{i}", f"e{i}")])
    link = FakeLink(inflight=10)
    pub = make(outbox, link)
    pub.step()
    assert ids(link) == [b"p0", b"p1", b"p2", b"p3", b"p4"]
    assert outbox.stats().depth == 5
    for mid in link.unacked():
        link.ack(mid)
    pub.step()
    assert outbox.stats().depth == 0


def test_disconnected_link_gets_nothing_and_loses_nothing(outbox):
    put(outbox, 3)
    link = FakeLink(connected=False)
    pub = make(outbox, link)
    pub.step()
    assert link.sent == []
    assert outbox.stats().depth == 3


def test_after_a_drop_unacked_rows_are_sent_again_acked_ones_not(outbox):
    put(outbox, 4)
    link = FakeLink(inflight=4)
    pub = make(outbox, link)
    pub.step()
    link.ack(1)
    link.drop()  # mids 2..4 will never be acked
    pub.step()
    assert outbox.stats().depth == 3
    link.connected = True
    pub.step()
    assert ids(link)[:4] == [b"p0xxxxxxxx", b"p1xxxxxxxx", b"p2xxxxxxxx", b"p3xxxxxxxx"]
    # exactly the three unacked rows again, in order; the acked p0 never again
    assert ids(link)[4:] == [b"p1xxxxxxxx", b"p2xxxxxxxx", b"p3xxxxxxxx"]
    assert pub.stats().resends == 3
    assert [mid for mid, *_ in link.sent[4:]] == [5, 6, 7]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0x95, "permanent"),  # packet too large
        (0x90, "permanent"),  # topic name invalid
        (0x99, "permanent"),  # payload format invalid
        (0x87, "not_authorized"),
        (0x97, "transient"),  # quota exceeded
        (0x80, "transient"),  # unspecified error
        (0x83, "transient"),  # implementation specific (e.g. during an ACL reload)
    ],
)
def test_refusals_are_sorted_by_what_can_be_done(code, kind):
    assert classify_refusal(code) == kind


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stepped(outbox, link, clock, **cfg) -> Publisher:
    cfg = {"reconnect_min_s": 1.0, "reconnect_max_s": 4.0, **cfg}
    return Publisher(
        outbox, link, MqttConfig(**cfg), TOPICS, ack_batch=1, ack_delay_s=0.0, clock=clock,
        rng=random.Random(1),
    )  # fmt: skip


def test_permanent_refusal_is_dead_lettered_at_once_and_the_rest_flows(outbox):
    put(outbox, 3)
    link = FakeLink(inflight=1)
    pub = make(outbox, link)
    pub.step()
    link.ack(1, ok=False, reason="Packet too large", code=0x95)
    pub.step()
    assert outbox.stats().dead_letters == 1
    assert len(link.sent) == 2  # the next row went out
    link.ack(2)
    pub.step()
    link.ack(3)
    pub.step()
    assert outbox.stats().depth == 0
    (dead,) = outbox.dead_letters()
    assert "0x95" in dead.reason
    assert dead.msg_id == "m0"


def test_not_authorized_is_retried_with_backoff_then_dead_lettered(outbox):
    put(outbox, 1)
    link, clock = FakeLink(inflight=4), Clock()
    pub = stepped(outbox, link, clock, refused_retries=3)
    pub.step()
    for attempt in range(1, 3):
        link.ack(len(link.sent), ok=False, reason="Not authorized", code=0x87)
        pub.step()
        assert len(link.sent) == attempt  # waiting for its backoff, not re-sent at once
        assert pub.stats().retrying == 1
        clock.now += 10.0
        pub.step()
        assert len(link.sent) == attempt + 1  # the same row again
        assert link.sent[-1][2] == link.sent[0][2]
    link.ack(len(link.sent), ok=False, reason="Not authorized", code=0x87)
    pub.step()
    assert outbox.stats().dead_letters == 1  # the third refusal: dead-lettered
    assert outbox.stats().depth == 0
    assert pub.stats().refused == 3


def test_transient_refusal_is_retried_until_taken_and_holds_its_window_slot(outbox):
    put(outbox, 3)
    link, clock = FakeLink(inflight=2), Clock()
    pub = stepped(outbox, link, clock)
    pub.step()
    assert len(link.sent) == 2
    for _ in range(8):  # quota exceeded, again and again: never dead-lettered
        link.ack(link.sent[-2][0], ok=False, reason="Quota exceeded", code=0x97)
        link.ack(link.sent[-1][0], ok=False, reason="Quota exceeded", code=0x97)
        pub.step()
        assert pub.stats().retrying == 2
        assert pub.stats().inflight == 0
        sent = len(link.sent)
        pub.step()
        assert len(link.sent) == sent  # the third row does not get their slots
        clock.now += 10.0
        pub.step()
        assert len(link.sent) == sent + 2
    assert outbox.stats().dead_letters == 0
    link.ack(link.sent[-2][0])
    link.ack(link.sent[-1][0])
    pub.step()
    assert outbox.stats().depth == 1
    link.ack(link.sent[-1][0])
    pub.step()
    assert outbox.stats().depth == 0


def test_events_are_never_queued_behind_snapshots(outbox):
    for i in range(20):  # a snapshot backlog
        outbox.put([OutMessage("snapshot", f"t/snapshots/s{i}", b"j" * 100, 1, f"s{i}", f"s{i}")])
    link = FakeLink(inflight=8)
    pub = make(outbox, link, max_inflight_snapshots=2)
    pub.step()
    assert [t for _, t, *_ in link.sent] == ["t/snapshots/s0", "t/snapshots/s1"]
    for i in range(3):  # events arrive behind the backlog
        outbox.put([OutMessage("event", "t/events", f"e{i}".encode(), 1, f"e{i}", f"e{i}")])
    pub.step()
    assert [p for _, t, p, *_ in link.sent if t == "t/events"] == [b"e0", b"e1", b"e2"]
    assert len(link.sent) == 5  # ... before any further snapshot
    link.ack(1)
    pub.step()
    assert link.sent[-1][1] == "t/snapshots/s2"  # one snapshot out, one more in
    assert sum(1 for _, t, *_ in link.sent if "snapshots" in t) == 3


def test_lanes_keep_creation_order_within_each_lane_after_a_drop(outbox):
    for i in range(4):
        outbox.put(
            [
                OutMessage("event", "t/events", f"e{i}".encode(), 1, f"e{i}", f"v{i}"),
                OutMessage("snapshot", f"t/snapshots/v{i}", b"j", 1, f"e{i}.jpg", f"v{i}"),
            ]
        )
    link = FakeLink(inflight=3)
    pub = make(outbox, link, max_inflight_snapshots=1)
    pub.step()
    assert [p for _, _, p, *_ in link.sent] == [b"e0", b"e1", b"e2"]
    link.ack(1)
    link.drop()
    pub.step()
    link.connected = True
    pub.step()
    events = [p for _, t, p, *_ in link.sent if t == "t/events"]
    assert events == [b"e0", b"e1", b"e2", b"e1", b"e2", b"e3"]


def test_a_gap_message_reports_what_the_disk_bound_dropped(tmp_path):
    box = Outbox.open(OutboxConfig(path=tmp_path / "o.db", max_bytes=1024 * 1024))
    try:
        for i in range(60):  # 60 x 40 KB into a 1 MiB bound: old ones are dropped
            box.put(
                [
                    OutMessage("event", "t/events", b"e" * 500, 1, f"e{i}", f"v{i}"),
                    OutMessage("snapshot", f"t/s/v{i}", b"j" * 40_000, 1, f"e{i}.jpg", f"v{i}"),
                ]
            )
        dropped = box.stats().dropped_snapshots
        assert dropped > 0
        link = FakeLink(inflight=100)
        pub = make(box, link)
        pub.step()
        (gap,) = [m for m in link.sent if m[1] == "camnet/c/n/gaps"]
        body = json.loads(gap[2])
        assert body["schema"] == "camnet.gap/1"
        assert body["reason"] == "outbox_full"
        assert len(body["dropped_snapshots"]) == dropped
        assert body["dropped_snapshots"][0] == "v0"
        assert body["dropped_seq"] == []  # only snapshots went: no event seq is missing
        link.drop()  # lost before its PUBACK: sent again, same id
        pub.step()
        link.connected = True
        pub.step()
        again = [m for m in link.sent if m[1] == "camnet/c/n/gaps"]
        assert len(again) == 2
        assert json.loads(again[1][2])["id"] == body["id"]
        link.ack(again[1][0])
        pub.step()
        assert box.stats().gaps_pending == 0
        assert box.pending_gap() is None
        assert pub.stats().gaps_sent == 1
    finally:
        box.close()


def test_oversized_message_never_reaches_the_link(outbox):
    put(outbox, 1, size=5000)
    put(outbox, 1, size=10)
    link = FakeLink()
    pub = make(outbox, link, max_payload_bytes=4096)
    pub.step()
    assert ids(link) == [b"p1xxxxxxxx"]  # the small row went out, the big one never
    assert outbox.stats().dead_letters == 1


def test_snapshot_rows_carry_id_and_seq_properties(outbox):
    def batch(seq):
        return [
            OutMessage("event", "t/events", b"{}", 1, "ev-0", "ev"),
            OutMessage("snapshot", "t/snapshots/ev", b"jpeg", 1, "ev-0.jpg", "ev"),
        ]

    seq = outbox.put(batch)
    link = FakeLink()
    make(outbox, link).step()
    (_, _, _, _, event_props), (_, topic, _, _, snap_props) = link.sent
    assert event_props is None
    assert topic == "t/snapshots/ev"
    assert snap_props == {"id": "ev-0.jpg", "seq": str(seq)}
