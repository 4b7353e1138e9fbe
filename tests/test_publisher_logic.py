"""The publisher's rules, stepped by hand against the link fake and a real outbox file."""

from __future__ import annotations

import pytest

from agent.config import MqttConfig, OutboxConfig
from agent.outbox import Outbox, OutMessage
from agent.publisher import Publisher
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


def make(outbox, link, **cfg) -> Publisher:
    return Publisher(outbox, link, MqttConfig(**cfg), ack_batch=1, ack_delay_s=0.0)


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


def test_refused_message_is_dead_lettered_and_the_rest_flows(outbox):
    put(outbox, 3)
    link = FakeLink(inflight=1)
    pub = make(outbox, link)
    pub.step()
    link.ack(1, ok=False, reason="Not authorized")
    pub.step()
    assert outbox.stats().dead_letters == 1
    assert len(link.sent) == 2  # the next row went out
    link.ack(2)
    pub.step()
    link.ack(3)
    pub.step()
    assert outbox.stats().depth == 0


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
