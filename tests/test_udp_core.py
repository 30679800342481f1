"""The sans-IO UDP core: codec, range sets, RTT, sender invariants, handshake."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftransfer.errors import LocalProtocolError
from ftransfer.proto.events import Completed, EndReceived, Failed
from ftransfer.proto.rtt import INITIAL_RTO_S, MAX_RTO_S, MIN_RTO_S, RttEstimator
from ftransfer.proto.udp import packets as pk
from ftransfer.proto.udp.congestion import Bbr, NewReno, RateSample, _Mode, create
from ftransfer.proto.udp.endpoint import RequestReceived, ServerEndpoint, cookie_valid, make_cookie
from ftransfer.proto.udp.rangeset import RangeSet
from ftransfer.proto.udp.sender import Sender
from ftransfer.proto.udp.session import Session, SessionConfig, State

# ---- range sets ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 20)), max_size=40), st.integers(0, 220)
)
def test_rangeset_matches_a_plain_set(adds: list[tuple[int, int]], bound: int) -> None:
    ranges, model = RangeSet(), set[int]()
    for start, length in adds:
        fresh = ranges.add_new(start, start + length)
        assert {x for a, b in fresh for x in range(a, b)} == set(
            range(start, start + length)
        ) - model
        model |= set(range(start, start + length))
    listed = list(ranges)
    assert all(a < b for a, b in listed)
    assert all(listed[i][1] < listed[i + 1][0] for i in range(len(listed) - 1))  # not adjacent
    assert {x for a, b in listed for x in range(a, b)} == model
    for probe in range(0, 225, 7):
        found = ranges.containing(probe)
        assert (probe in ranges) == (probe in model) == (found is not None)
    assert ranges.newest(3) == sorted(listed, reverse=True)[:3]
    ranges.discard_below(bound)
    assert {x for a, b in ranges for x in range(a, b)} == {x for x in model if x >= bound}


# ---- RTT (RFC 6298) ---------------------------------------------------------------------


def test_rto_follows_rfc6298() -> None:
    rtt = RttEstimator()
    assert rtt.rto() == INITIAL_RTO_S
    rtt.on_sample(0.1)
    assert rtt.srtt == 0.1 and rtt.rttvar == 0.05
    assert rtt.rto() == pytest.approx(0.3)  # SRTT + 4 RTTVAR
    rtt.on_sample(0.3)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    for _ in range(20):
        rtt.on_timeout()
    assert rtt.rto() == MAX_RTO_S  # backoff is clamped
    rtt.on_sample(0.001)
    assert rtt.backoff == 1  # a new sample collapses the backoff
    fast = RttEstimator()
    fast.on_sample(0.0001)
    assert fast.rto() == MIN_RTO_S


# ---- datagram codec ---------------------------------------------------------------------

BODIES: list[pk.Body] = [
    pk.Initial(
        nonce=7,
        operation=pk.Operation.PUT,
        chunk_bytes=1400,
        window=4096,
        cookie=b"c" * 20,
        size=123,
        mtime_ns=-1,
        path="dir/ü.bin",
        mode=0o750,
        exclusive=True,
    ),
    pk.Initial(
        nonce=8,
        operation=pk.Operation.GET,
        chunk_bytes=1400,
        window=4096,
        cookie=b"",
        size=0,
        mtime_ns=-1,
        path="x",
    ),
    pk.Retry(nonce=9, cookie=b"x" * 20),
    pk.Accept(
        nonce=9, code=0, chunk_bytes=1400, window=64, size=5, mtime_ns=3, message="", mode=0o600
    ),
    pk.Accept(nonce=9, code=0, chunk_bytes=1400, window=64, size=5, mtime_ns=3, message=""),
    pk.Accept(nonce=9, code=10, chunk_bytes=0, window=0, size=0, mtime_ns=0, message="not found"),
    pk.Data(seq=2**63, tx=5, payload=b"payload"),
    pk.Ack(cumulative=10, largest_tx=99, window=64, delay_us=250, ranges=((20, 25), (12, 14))),
    pk.Fin(size=77, digest=bytes(range(16))),
    pk.Result(code=30, digest=bytes(16), message="mismatch"),
    pk.Close(code=0, message=""),
    pk.Ping(seq=1, timestamp_ns=2, padding=30),
    pk.Pong(seq=1, timestamp_ns=2, padding=30),
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_datagrams_round_trip(body: pk.Body) -> None:
    datagram = pk.encode(0xDEADBEEF, body)
    session, decoded = pk.decode_untrusted(datagram)
    assert session == 0xDEADBEEF
    if isinstance(body, pk.Data):
        assert isinstance(decoded, pk.Data) and bytes(decoded.payload) == body.payload
    else:
        assert decoded == body


def test_initial_is_padded_and_default_data_fits_a_1500_byte_mtu() -> None:
    assert len(pk.encode(0, BODIES[0])) >= pk.MIN_INITIAL_BYTES
    data = pk.encode(1, pk.Data(seq=0, tx=0, payload=bytes(pk.DEFAULT_CHUNK_BYTES)))
    assert len(data) <= 1500 - 40 - 8  # IPv6 + UDP headers


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_every_flipped_bit_is_detected(body: pk.Body) -> None:
    datagram = pk.encode(1, body)
    for bit in range(0, len(datagram) * 8, 7):
        flipped = bytearray(datagram)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(pk.PacketError):
            pk.decode_untrusted(bytes(flipped))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_datagrams_raise_only_packet_error(noise: bytes) -> None:
    with contextlib.suppress(pk.PacketError):
        pk.decode_untrusted(noise)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BODIES), st.data())
def test_truncated_datagrams_raise_only_packet_error(body: pk.Body, data: st.DataObject) -> None:
    datagram = pk.encode(3, body)
    cut = data.draw(st.integers(0, len(datagram) - 1))
    with pytest.raises(pk.PacketError):
        pk.decode_untrusted(datagram[:cut])


def _resealed(body_bytes: bytes, kind: pk.PacketType) -> bytes:
    head = pk.HEADER.pack(pk.MAGIC, kind, 1) + body_bytes
    from ftransfer.checksum import datagram_check

    return head + pk.CHECK.pack(datagram_check(head))


def test_well_sealed_but_malformed_bodies_are_refused() -> None:
    below = pk._ACK.pack(10, 0, 1, 0, 1) + pk._RANGE.pack(5, 2)  # range below cumulative
    with pytest.raises(pk.PacketError, match="below the cumulative"):
        pk.decode_untrusted(_resealed(below, pk.PacketType.ACK))
    with pytest.raises(pk.PacketError, match="unknown datagram type"):
        pk.decode_untrusted(_resealed(b"", pk.PacketType.RETRY + 100))  # type: ignore[arg-type]
    with pytest.raises(pk.PacketError):
        pk.decode_untrusted(_resealed(b"\x00" * 11 + b"\x09", pk.PacketType.INITIAL))


# ---- sender invariants --------------------------------------------------------------------


def _sender(size: int = 100 * 1400, cc: str = "bbr") -> Sender:
    return Sender(
        size=size,
        chunk_bytes=1400,
        window=1000,
        cc=create(cc, mss=1400),
        rtt=RttEstimator(),
        now=0.0,
        give_up_s=10.0,
    )


def _ack(cum: int, largest_tx: int, *ranges: tuple[int, int], window: int = 1000) -> pk.Ack:
    return pk.Ack(
        cumulative=cum, largest_tx=largest_tx, window=window, delay_us=0, ranges=tuple(ranges)
    )


def test_acks_for_data_never_sent_are_ignored() -> None:
    sender = _sender()
    n = len(sender.poll(0.0))
    assert 0 < n < 90
    window_before = sender.cc.cwnd()
    sender.on_ack(_ack(90, 10_000, (95, 100)), 0.05)  # claims chunks never sent
    assert sender.bytes_in_flight == 0  # the n that were sent are acknowledged...
    assert sender.stats.sent == n and not sender.done  # ...but nothing beyond them
    assert sender.cc.cwnd() >= window_before
    assert [seq for seq, _tx, _size in sender.poll(1.0)][:1] == [n]  # continues after the real ones


def test_a_duplicate_ack_never_triggers_a_retransmission() -> None:
    sender = _sender(cc="reno")
    sender.poll(0.0)
    ack = _ack(4, 4)
    for _ in range(50):
        sender.on_ack(ack, 0.01)
    assert sender.stats.retransmitted == 0


def test_karn_no_rtt_sample_from_a_retransmitted_chunk() -> None:
    sender = _sender(size=1400)
    [(seq, _tx, _size)] = sender.poll(0.0)
    deadline = sender.get_timer()
    assert deadline is not None
    sender.handle_timer(deadline)  # RTO: chunk 0 counts as lost
    assert [s for s, _t, _n in sender.poll(deadline)] == [seq]
    sender.on_ack(_ack(1, 1), deadline + 0.001)
    assert sender.done and sender.rtt.srtt is None  # ambiguous: not sampled


def test_loss_is_detected_three_transmissions_later() -> None:
    sender = _sender()
    n = len(sender.poll(0.0))
    sender.on_ack(_ack(0, 2, (1, 3)), 0.04)  # 0 missing, only 1..2 arrived
    assert sender.bytes_in_flight == (n - 2) * 1400  # 0 still counts as in flight
    sender.on_ack(_ack(0, 3, (1, 4)), 0.041)  # 3 arrived too: 0 is lost
    assert sender.bytes_in_flight == (n - 4) * 1400
    sender.on_ack(_ack(0, n - 1, (1, n)), 0.042)  # room in the window to resend
    resent = [seq for seq, _tx, _size in sender.poll(0.05)]
    assert resent[0] == 0 and sender.stats.retransmitted == 1


class _Recorder:
    """A congestion controller that holds nothing back and keeps the rate samples."""

    name = "recorder"

    def __init__(self) -> None:
        self.samples: list[RateSample] = []

    def cwnd(self) -> int:
        return 1 << 30

    def pacing_rate(self) -> float:
        return 1e12

    def on_ack(
        self,
        *,
        now: float,
        acked: int,
        delivered: int,
        inflight: int,
        sample: RateSample | None,
        rtt: RttEstimator,
    ) -> None:
        if sample is not None:
            self.samples.append(sample)

    def on_loss(self, *, now: float, lost: int, inflight: int, rtt: RttEstimator) -> None:
        pass

    def on_timeout(self, *, now: float) -> None:
        pass


@pytest.mark.parametrize("idle", [0.0, 0.01, 0.05])
def test_a_rate_sample_never_spans_time_with_nothing_in_flight(idle: float) -> None:
    """A flight acked in 1 ms was delivered at flight / 1 ms, however long the pipe
    stood empty before it left (the pacer's wait, a read that stalled): a send with
    nothing in flight restarts the interval, as BBR's rate estimator does. Counted
    from the previous ack, the wait made BBR measure its own idling and pin itself
    at ~2 MB/s on loopback (14-20 s for a 20 MB put)."""
    recorder = _Recorder()
    sender = Sender(
        size=200 * 1400,
        chunk_bytes=1400,
        window=1000,
        cc=recorder,
        rtt=RttEstimator(),
        now=0.0,
        give_up_s=10.0,
    )
    first = sender.poll(0.0)
    sender.on_ack(_ack(len(first), len(first) - 1), 0.001)
    assert sender.bytes_in_flight == 0
    start = 0.001 + idle
    second = sender.poll(start)
    acked = len(first) + len(second)
    sender.on_ack(_ack(acked, acked - 1), start + 0.001)
    flight_bytes = sum(size for _seq, _tx, size in second)
    assert recorder.samples[-1].delivery_rate == pytest.approx(flight_bytes / 0.001)


# ---- address validation -------------------------------------------------------------------


def test_cookies_bind_address_nonce_and_time() -> None:
    secret = b"s" * 32
    cookie = make_cookie(secret, ("10.0.0.1", 5), 42, now=100.0)
    assert cookie_valid(secret, cookie, ("10.0.0.1", 5), 42, now=100.0)
    assert cookie_valid(secret, cookie, ("10.0.0.1", 5), 42, now=125.0)  # next bucket
    assert not cookie_valid(secret, cookie, ("10.0.0.1", 5), 42, now=200.0)  # expired
    assert not cookie_valid(secret, cookie, ("10.0.0.2", 5), 42, now=100.0)
    assert not cookie_valid(secret, cookie, ("10.0.0.1", 6), 42, now=100.0)
    assert not cookie_valid(secret, cookie, ("10.0.0.1", 5), 43, now=100.0)
    assert not cookie_valid(b"t" * 32, cookie, ("10.0.0.1", 5), 42, now=100.0)


def test_unvalidated_clients_get_at_most_three_times_what_they_sent() -> None:
    rng = random.Random(5)
    endpoint = ServerEndpoint(
        secret=b"k" * 32,
        rng=rng,
        config=SessionConfig(chunk_bytes=1400, window=64, give_up_s=5),
        max_sessions=4,
    )
    received = sent = 0
    for i in range(200):  # a spoofed flood from many "victims", never echoing a cookie
        initial = pk.Initial(
            nonce=i,
            operation=pk.Operation.GET,
            chunk_bytes=65000,
            window=10**6,
            cookie=b"",
            size=0,
            mtime_ns=0,
            path="big",
        )
        datagram = pk.encode(0, initial)
        received += len(datagram)
        endpoint.receive_datagram(datagram, (f"203.0.113.{i % 250}", 1000 + i), now=float(i))
        sent += sum(len(d) for d, _a in endpoint.datagrams_to_send(float(i)))
    assert endpoint.session_count == 0 and endpoint.next_event() is None  # no state kept
    assert sent <= received / 10  # RETRY is tiny: far below the 3x bound
    ping = pk.encode(0, pk.Ping(seq=1, timestamp_ns=5, padding=0))
    endpoint.receive_datagram(ping, ("203.0.113.9", 1), now=0.0)
    [(pong, address)] = endpoint.datagrams_to_send(0.0)
    assert len(pong) == len(ping) and address == ("203.0.113.9", 1)


def test_newreno_halves_once_per_round_trip() -> None:
    reno = NewReno(mss=1000)
    rtt = RttEstimator()
    rtt.on_sample(0.1)
    start = reno.cwnd()
    reno.on_loss(now=1.0, lost=1000, inflight=0, rtt=rtt)
    reno.on_loss(now=1.05, lost=1000, inflight=0, rtt=rtt)  # same round trip: ignored
    assert reno.cwnd() == start // 2


def test_receiver_refuses_wrong_lengths_out_of_window_and_counts_duplicates() -> None:
    from ftransfer.proto.udp.receiver import Receiver

    wide = Receiver(size=10 * 100 + 7, chunk_bytes=100, window=64)
    assert wide.on_data(0, 0, bytes(99), now=0.0) == []  # short, and not the last chunk
    assert wide.on_data(10, 1, bytes(100), now=0.0) == []  # the last chunk is 7 bytes
    assert wide.stats.malformed == 2
    assert wide.on_data(11, 2, bytes(7), now=0.0) == []  # beyond the file: never sent
    assert wide.stats.beyond_window == 1
    receiver = Receiver(size=10 * 100 + 7, chunk_bytes=100, window=4)
    assert receiver.on_data(4, 2, bytes(100), now=0.0) == []  # cumulative 0 + window 4
    assert receiver.stats.beyond_window == 1
    assert receiver.on_data(2, 4, bytes(100), now=0.0) == []  # buffered out of order
    assert [len(c) for c in receiver.on_data(0, 5, bytes(100), now=0.0)] == [100]
    assert [len(c) for c in receiver.on_data(1, 6, bytes(100), now=0.0)] == [100, 100]
    assert receiver.on_data(1, 7, bytes(100), now=0.0) == []
    assert receiver.stats.duplicates == 1 and receiver.cumulative == 3
    ack = receiver.make_ack(now=0.0)
    assert ack.cumulative == 3 and ack.largest_tx == 7 and ack.ranges == ()


def test_sessions_are_capped_per_address_and_in_all() -> None:
    endpoint = ServerEndpoint(
        secret=b"k" * 32,
        rng=random.Random(1),
        config=SessionConfig(chunk_bytes=1400, window=64, give_up_s=5),
        max_sessions=3,
        max_per_address=2,
    )

    def ask(host: str, nonce: int) -> int:
        """The code of the ACCEPT this request gets."""
        address = (host, 1000 + nonce)
        initial = pk.Initial(
            nonce=nonce,
            operation=pk.Operation.PUT,
            chunk_bytes=1400,
            window=64,
            cookie=make_cookie(b"k" * 32, address, nonce, 0.0),
            size=10,
            mtime_ns=-1,
            path="f",
        )
        endpoint.receive_datagram(pk.encode(0, initial), address, now=0.0)
        while (request := endpoint.next_event()) is not None:
            assert isinstance(request, RequestReceived)
            endpoint.accept(request, size=0, mtime_ns=-1, now=0.0, read_chunk=None)
        [(datagram, _address)] = endpoint.datagrams_to_send(0.0)
        _session, accept = pk.decode_untrusted(datagram)
        assert isinstance(accept, pk.Accept)
        return accept.code

    assert [ask("10.0.0.1", n) for n in (1, 2, 3)] == [0, 0, 41]  # 2 per address
    assert ask("10.0.0.2", 4) == 0
    assert ask("10.0.0.3", 5) == 41  # 3 in all


@pytest.mark.parametrize("name", ["bbr", "reno"])
def test_window_never_falls_below_what_the_receiver_acks_promptly(name: str) -> None:
    """Below the receiver's ack-every count each round waits for the delayed-ack
    timer and the rate estimate collapses with it (seen on loopback: 75 s stalls)."""
    from ftransfer.proto.udp.congestion import RateSample
    from ftransfer.proto.udp.receiver import ACK_EVERY_PACKETS

    mss = 1400
    cc = create(name, mss=mss)
    rtt = RttEstimator()
    rtt.on_sample(0.000085)  # loopback
    cc.on_ack(
        now=0.1,
        acked=mss,
        delivered=mss,
        inflight=0,
        rtt=rtt,
        sample=RateSample(delivery_rate=1e5, prior_delivered=0, app_limited=False),
    )
    cc.on_loss(now=0.2, lost=10 * mss, inflight=mss, rtt=rtt)
    cc.on_timeout(now=0.3)
    assert cc.cwnd() >= 2 * ACK_EVERY_PACKETS * mss


# ---- ack aggregation and reordering -------------------------------------------------------


def _bbr_in_probe_bw(acks: list[tuple[float, int]]) -> Bbr:
    """A BBR that measured 10 MB/s over a 1 ms path, then saw ``acks`` (time, bytes)."""
    bbr = Bbr(mss=1400)
    rtt = RttEstimator()
    rtt.on_sample(0.001)
    bbr.mode = _Mode.PROBE_BW
    delivered = 0
    for now, acked in acks:
        delivered += acked
        sample = RateSample(delivery_rate=10e6, prior_delivered=delivered, app_limited=False)
        bbr.on_ack(now=now, acked=acked, delivered=delivered, inflight=0, sample=sample, rtt=rtt)
    return bbr


def test_bbr_widens_its_window_by_the_ack_bursts_it_measures() -> None:
    """Smooth acks (14 KB every 1.4 ms at 10 MB/s) add nothing; the same bytes acked
    in 70 KB bursts every 7 ms (a receiver reading in batches) add about a burst."""
    smooth = _bbr_in_probe_bw([(i * 0.0014, 14_000) for i in range(1, 200)])
    bursty = _bbr_in_probe_bw([(i * 0.007, 70_000) for i in range(1, 40)])
    base = 2 * 10e6 * 0.001 + 3 * 1400  # two BDPs plus three packets
    assert smooth.cwnd() <= base + 14_000
    assert base + 50_000 <= bursty.cwnd() <= base + 70_000


def test_extra_acked_is_bounded_by_100_ms_of_bandwidth() -> None:
    bbr = _bbr_in_probe_bw([(0.5, 5_000_000)])  # one absurd burst
    assert bbr.cwnd() <= 2 * 10e6 * 0.001 + 3 * 1400 + 10e6 * 0.1


def _lost_by(sender: Sender, start: float, check_after: float) -> bool:
    """Send at ``start``; 40 ms later everything before the first new chunk and the
    second one are acked: is the first declared lost ``check_after`` seconds after it
    left? (Only it can be: the rest were sent after the newest acknowledged.)"""
    sent = sender.poll(start)
    assert len(sent) >= 2
    (first, _, _), (second, second_tx, _) = sent[0], sent[1]
    sender.on_ack(_ack(first, second_tx, (second, second + 1)), start + 0.040)
    before = sender.bytes_in_flight
    sender.handle_timer(start + check_after)
    return sender.bytes_in_flight == before - 1400  # the first left the flight: lost


def _learned_reordering() -> Sender:
    """A sender on a 40 ms path that declared chunk 0 lost and then learned, from an
    ack 1 ms after the resend, that the original had arrived after all."""
    sender = _sender(size=1000 * 1400)
    n = len(sender.poll(0.0))
    sender.on_ack(_ack(0, n - 1, (1, n)), 0.040)  # 0 missing, every later one arrived
    resent = sender.poll(0.041)
    assert resent[0][0] == 0 and sender.stats.retransmitted == 1
    sender.on_ack(_ack(n, resent[0][1]), 0.042)  # just the resend: no RTT sample (Karn)
    assert sender.stats.spurious == 1
    return sender


def test_reordering_widens_the_time_threshold_as_rack_does() -> None:
    """Before reordering is seen, a chunk is lost 9/8 RTT (45 ms) after it was sent
    if a later one has arrived; afterwards the window is RTT + min_rtt / 4 (50 ms)."""
    assert _lost_by(_sender(size=1000 * 1400), 0.0, 0.046)
    learned = _learned_reordering()
    assert not _lost_by(learned, 0.1, 0.046)
    assert _lost_by(_learned_reordering(), 0.1, 0.051)


def test_a_receiver_estimates_loss_from_transmission_numbers() -> None:
    from ftransfer.proto.udp.receiver import Receiver

    receiver = Receiver(size=200 * 100, chunk_bytes=100, window=1000)
    assert receiver.loss_estimate() == 0.0
    lost = set(range(5, 200, 10))  # 20 of 200 transmissions never arrive
    for tx in range(200):
        if tx not in lost:
            receiver.on_data(tx, tx, bytes(100), now=0.0)
    assert receiver.loss_estimate() == pytest.approx(0.10)
    for tx, seq in enumerate(sorted(lost), start=200):  # resent, all arrive
        receiver.on_data(seq, tx, bytes(100), now=0.0)
    assert receiver.loss_estimate() == pytest.approx(20 / 220)


def test_a_repeated_request_resends_the_flight_only_before_any_ack() -> None:
    """The client repeated its INITIAL: before any ack it never saw our data, so the
    whole flight goes again at once; after an ack, a late duplicate INITIAL must
    not cause a single resend."""
    fresh = _sender()
    n = len(fresh.poll(0.0))
    fresh.resend_unseen_flight(0.01)
    assert fresh.bytes_in_flight == 0
    assert [seq for seq, _tx, _size in fresh.poll(0.01)] == list(range(n))
    assert fresh.stats.retransmitted == n
    acked = _sender()
    n = len(acked.poll(0.0))
    acked.on_ack(_ack(1, 0), 0.04)
    before = acked.bytes_in_flight
    acked.resend_unseen_flight(0.05)
    assert acked.bytes_in_flight == before == (n - 1) * 1400
    assert acked.stats.retransmitted == 0


# ---- requests a validated client may not make ---------------------------------------------


def _validated(endpoint: ServerEndpoint, address: tuple[str, int], **fields: object) -> bytes:
    values: dict[str, object] = {
        "nonce": 5,
        "operation": pk.Operation.GET,
        "chunk_bytes": 1400,
        "window": 64,
        "size": 0,
        "mtime_ns": -1,
        "path": "f",
    }
    values.update(fields)
    cookie = make_cookie(b"k" * 32, address, int(values["nonce"]), 0.0)  # type: ignore[call-overload]
    return pk.encode(0, pk.Initial(cookie=cookie, **values))  # type: ignore[arg-type]


def _endpoint() -> ServerEndpoint:
    return ServerEndpoint(
        secret=b"k" * 32,
        rng=random.Random(1),
        config=SessionConfig(chunk_bytes=65000, window=64, give_up_s=5),
        max_sessions=8,
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"operation": 9}, "unknown operation 9"),
        ({"window": 0}, "window must be at least 1"),
        ({"chunk_bytes": 100}, "chunk size must be from 512 to 65000"),
        ({"chunk_bytes": 65001}, "chunk size must be from 512 to 65000"),
        ({"operation": 6, "size": 2}, "MKDIR's size must be 0 (one directory) or 1"),
    ],
)
def test_a_request_that_cannot_be_served_is_refused_at_once_with_the_reason(
    fields: dict[str, object], reason: str
) -> None:
    endpoint = _endpoint()
    address = ("10.0.0.1", 7)
    endpoint.receive_datagram(_validated(endpoint, address, **fields), address, now=0.0)
    assert endpoint.next_event() is None  # the application is not even asked
    [(datagram, to)] = endpoint.datagrams_to_send(0.0)
    session, accept = pk.decode_untrusted(datagram)
    assert to == address and session == 0 and isinstance(accept, pk.Accept)
    assert accept.code == 1 and reason in accept.message


def test_a_path_that_is_not_utf8_is_refused_with_the_reason_not_dropped() -> None:
    endpoint = _endpoint()
    address = ("10.0.0.1", 7)
    datagram = _validated(endpoint, address, path="ab")
    head = datagram[: -pk.CHECK.size].replace(b"\x00\x02ab", b"\x00\x02\xff\xfe", 1)
    from ftransfer.checksum import datagram_check

    endpoint.receive_datagram(head + pk.CHECK.pack(datagram_check(head)), address, now=0.0)
    assert endpoint.next_event() is None and endpoint.stats.corrupt == 0
    [(datagram, _to)] = endpoint.datagrams_to_send(0.0)
    _session, accept = pk.decode_untrusted(datagram)
    assert isinstance(accept, pk.Accept)
    assert accept.code == 1 and "not valid UTF-8" in accept.message


def test_an_initial_shorter_than_1200_bytes_gets_no_answer() -> None:
    endpoint = _endpoint()
    address = ("10.0.0.1", 7)
    datagram = _validated(endpoint, address)
    body = datagram[pk.HEADER.size : -pk.CHECK.size].rstrip(b"\0")  # strip the padding
    head = pk.HEADER.pack(pk.MAGIC, pk.PacketType.INITIAL, 0) + body
    from ftransfer.checksum import datagram_check

    short = head + pk.CHECK.pack(datagram_check(head))
    assert len(short) < pk.MIN_INITIAL_BYTES
    endpoint.receive_datagram(short, address, now=0.0)
    assert endpoint.datagrams_to_send(0.0) == [] and endpoint.stats.short_initials == 1


def test_the_server_chooses_at_most_the_clients_chunk_size() -> None:
    endpoint = _endpoint()
    address = ("10.0.0.1", 7)
    endpoint.receive_datagram(_validated(endpoint, address, chunk_bytes=600), address, now=0.0)
    request = endpoint.next_event()
    assert isinstance(request, RequestReceived)
    endpoint.accept(request, size=10, mtime_ns=0, now=0.0, read_chunk=lambda o, n: bytes(n))
    _session, accept = pk.decode_untrusted(endpoint.datagrams_to_send(0.0)[0][0])
    assert isinstance(accept, pk.Accept) and accept.chunk_bytes == 600


# ---- the session's state table --------------------------------------------------------------


def _receiver_session() -> Session:
    return Session(
        session_id=1,
        size=3,
        sending=False,
        config=SessionConfig(chunk_bytes=1400, window=64, give_up_s=5),
        now=0.0,
    )


def test_a_verdict_is_given_once_and_only_on_end_received() -> None:
    session = _receiver_session()
    with pytest.raises(LocalProtocolError, match="finish"):
        session.finish(code=0, message="", digest=bytes(16), now=0.0)  # nothing arrived yet
    assert session.state is State.ERROR
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        session.abort()  # an error state refuses all further work


def test_a_failed_verdict_carries_the_receivers_digest_and_the_close_its_code() -> None:
    receiver = _receiver_session()
    receiver.receive_data(0, 0, memoryview(b"abc"), now=0.0)
    receiver.receive(pk.Fin(size=3, digest=bytes(16)), now=0.0)
    events = [receiver.next_event(), receiver.next_event()]
    assert isinstance(events[1], EndReceived)
    mine = b"\x01" * 16
    receiver.finish(code=30, message="xxh3-128 mismatch", digest=mine, now=0.0)
    [result] = [
        pk.decode_untrusted(d)[1] for d in receiver.datagrams(0.0) if d[1] == pk.PacketType.RESULT
    ]
    assert isinstance(result, pk.Result) and result.digest == mine and result.code == 30
    assert receiver.next_event() == Failed(
        code=30, message="xxh3-128 mismatch", digest=mine, session=1
    )
    sender = Session(
        session_id=1,
        size=3,
        sending=True,
        config=SessionConfig(chunk_bytes=1400, window=64, give_up_s=5),
        now=0.0,
        read_chunk=lambda offset, n: b"abc"[offset : offset + n],
    )
    sender.datagrams(0.0)
    sender.receive(pk.Ack(cumulative=1, largest_tx=0, window=64, delay_us=0, ranges=()), now=0.01)
    sender.datagrams(0.01)  # every chunk acknowledged: the FIN goes out
    sender.receive(result, now=0.02)
    [close] = [pk.decode_untrusted(d)[1] for d in sender.datagrams(0.02)]
    assert isinstance(close, pk.Close) and close.code == 30  # not 0: the transfer failed
    assert isinstance(sender.next_event(), Failed)
    assert sender.state is State.DONE and sender.next_event() is None
    assert not isinstance(sender.next_event(), Completed)


@pytest.mark.parametrize("resend_seen", [False, True])
def test_a_resend_acked_before_the_receiver_saw_it_was_spurious(resend_seen: bool) -> None:
    """As DSACK would tell: an ACK that covers the resent chunk 0 but whose largest
    transmission number is below the resend's was sent for the original, however
    late it comes (here a whole round trip, too late for the timing test)."""
    sender = _sender(size=1000 * 1400)
    n = len(sender.poll(0.0))
    sender.on_ack(_ack(0, n - 1, (1, n)), 0.040)
    resent = sender.poll(0.041)
    assert resent[0][0] == 0 and sender.stats.retransmitted == 1
    sender.on_ack(_ack(n, resent[0][1] if resend_seen else n - 1), 0.081)
    assert sender.stats.spurious == (0 if resend_seen else 1)


def test_the_reordering_window_grows_past_min_rtt_up_to_srtt() -> None:
    """A short path whose jitter exceeds its round trip: min RTT 2 ms, samples of
    8 ms. Each round, the first chunk of a flight is declared lost by time and its
    original then arrives; the window grows by min_rtt / 4 per round past one
    min_rtt (the old bound: loss after 8 + 2 ms), to 8 ms + 12 x 0.5 ms, under the
    bound of RTT + SRTT."""
    sender = _sender(size=100_000 * 1400)
    now, wait = 0.0, 0.0
    for round_ in range(13):
        sent = sender.poll(now)
        start, (head, _, _), (last, last_tx, _) = now, sent[0], sent[-1]
        now += 0.002 if round_ == 0 else 0.008
        # all but the head arrive; the window lets nothing new out before the resend
        sender.on_ack(_ack(head, last_tx, (head + 1, last + 1), window=last + 1 - head), now)
        resent = sender.poll(now)
        while not resent:
            now = max(now, sender.get_timer() or now)
            sender.handle_timer(now)
            resent = sender.poll(now)
        assert [seq for seq, _tx, _size in resent] == [head]
        wait = now - start
        now += 0.0005
        sender.on_ack(_ack(last + 1, last_tx), now)  # the original, not the resend
        now += 0.001
    assert sender.stats.spurious == 13
    assert sender.rtt.min_rtt == 0.002 and sender.rtt.srtt is not None
    assert 0.008 + 0.002 + 0.003 <= wait <= 0.008 + sender.rtt.srtt


def _bbr_after_rtts(rtts: list[float]) -> Bbr:
    """A BBR at 12.5 MB/s in ProbeBW whose RTT samples were ``rtts``, each ack
    followed by a loss (10 % random loss: every ack or so)."""
    bbr = Bbr(mss=1400)
    rtt = RttEstimator()
    bbr.mode = _Mode.PROBE_BW
    delivered = 0
    for i, sample in enumerate(rtts):
        rtt.on_sample(sample)
        delivered += 14_000
        rate = RateSample(delivery_rate=12.5e6, prior_delivered=delivered, app_limited=False)
        now = i * 0.0001
        bbr.on_ack(now=now, acked=14_000, delivered=delivered, inflight=10**6, sample=rate, rtt=rtt)
        bbr.on_loss(now=now, lost=1400, inflight=10**6, rtt=rtt)
    return bbr


@pytest.mark.parametrize("base", [0.040, 0.002])
def test_bbr_takes_a_standing_queue_for_congestion_and_jitter_not(base: float) -> None:
    """5 ms of jitter each way adds 0-10 ms to every RTT sample, independently: the
    latest sample often looks like a queue (min RTT x 1.1 + 1 ms), the smallest of
    the last 32 does not. A queue (every sample 10 ms up) does, and caps what is in
    flight."""
    rng = random.Random(1)
    jitter = [base] + [base + rng.uniform(0, 0.005) + rng.uniform(0, 0.005) for _ in range(300)]
    assert sum(r > base * 1.1 + 0.001 for r in jitter) > 100  # the latest alone would cut
    assert _bbr_after_rtts(jitter)._inflight_cap is None
    queue = [base] * 40 + [base + 0.010] * 40
    assert _bbr_after_rtts(queue)._inflight_cap is not None


# ---- limits a validated request is held to, at their edges ----------------------------------


def _patched(datagram: bytes, offset: int, replacement: bytes, *, drop: int = 0) -> bytes:
    """``datagram`` with bytes at ``offset`` replaced (and ``drop`` bytes of padding
    cut off its end), its check recomputed: a peer that does not use our encoder."""
    from ftransfer.checksum import datagram_check

    head = datagram[: -pk.CHECK.size]
    head = head[:offset] + replacement + head[offset + len(replacement) :]
    head = head[: len(head) - drop]
    return head + pk.CHECK.pack(datagram_check(head))


def _answer(endpoint: ServerEndpoint, datagram: bytes) -> pk.Accept | None:
    address = ("10.0.0.1", 7)
    endpoint.receive_datagram(datagram, address, now=0.0)
    request = endpoint.next_event()
    if isinstance(request, RequestReceived):
        endpoint.accept(request, size=10, mtime_ns=0, now=0.0, read_chunk=lambda o, n: bytes(n))
    sent = endpoint.datagrams_to_send(0.0)
    if not sent:
        return None
    body = pk.decode_untrusted(sent[0][0])[1]
    assert isinstance(body, pk.Accept)
    return body


@pytest.mark.parametrize(("chunk", "code"), [(511, 1), (512, 0), (65000, 0), (65001, 1)])
def test_the_chunk_size_is_refused_outside_512_to_65000_and_taken_inside(
    chunk: int, code: int
) -> None:
    endpoint = _endpoint()
    accept = _answer(endpoint, _validated(endpoint, ("10.0.0.1", 7), chunk_bytes=chunk))
    assert accept is not None and accept.code == code
    if code:
        assert "chunk size must be from 512 to 65000" in accept.message
    else:
        assert accept.chunk_bytes == chunk  # never more than the client asked for


MTIME_OFFSET = pk.HEADER.size + 16 + 20 + 8  # INITIAL: nonce..cookie_len, cookie, size


def test_an_mtime_below_minus_one_is_refused_and_never_sent() -> None:
    endpoint = _endpoint()
    address = ("10.0.0.1", 7)
    datagram = _validated(endpoint, address, operation=pk.Operation.PUT, size=10)
    assert pk.decode_untrusted(datagram)[1].mtime_ns == -1  # type: ignore[union-attr]
    forged = _patched(datagram, MTIME_OFFSET, (-2).to_bytes(8, "big", signed=True))
    assert pk.decode_untrusted(forged)[1].mtime_ns == -2  # type: ignore[union-attr]
    accept = _answer(endpoint, forged)
    assert accept is not None and accept.code == 1 and "mtime_ns -2 is below -1" in accept.message
    before_1970 = _validated(endpoint, address, operation=pk.Operation.PUT, mtime_ns=-(10**9))
    assert pk.decode_untrusted(before_1970)[1].mtime_ns == -1  # type: ignore[union-attr]


@pytest.mark.parametrize(("cut", "answered"), [(0, True), (1, False)])
def test_an_initial_must_be_1200_bytes_to_be_answered(cut: int, answered: bool) -> None:
    endpoint = _endpoint()
    datagram = _validated(endpoint, ("10.0.0.1", 7))
    assert len(datagram) == pk.MIN_INITIAL_BYTES
    trimmed = _patched(datagram, 0, b"", drop=cut)
    assert len(trimmed) == pk.MIN_INITIAL_BYTES - cut
    assert (_answer(endpoint, trimmed) is not None) is answered
    assert endpoint.stats.short_initials == int(not answered)


# ---- the receiver's acknowledgement cadence -------------------------------------------------


def _acks_for(batches: list[list[int]], *, chunks: int = 100) -> list[pk.Ack]:
    """Chunks delivered in batches (each batch read together, as the driver reads a
    socket), ``datagrams`` called once after each batch, 0.1 ms apart (well within
    the 5 ms ack delay)."""
    session = Session(
        session_id=1,
        size=chunks * 1400,
        sending=False,
        config=SessionConfig(chunk_bytes=1400, window=4096, give_up_s=5),
        now=0.0,
    )
    acks: list[pk.Ack] = []
    for i, batch in enumerate(batches):
        now = i * 0.0001
        for seq in batch:
            session.receive_data(seq, seq, memoryview(bytes(1400)), now)
        for datagram in session.datagrams(now):
            body = pk.decode_untrusted(datagram)[1]
            assert isinstance(body, pk.Ack)
            acks.append(body)
    return acks


def test_in_order_chunks_are_acked_every_8_and_a_batch_once() -> None:
    one_by_one = _acks_for([[seq] for seq in range(64)])
    assert [a.cumulative for a in one_by_one] == [8, 16, 24, 32, 40, 48, 56, 64]
    in_one_batch = _acks_for([list(range(64))])
    assert [a.cumulative for a in in_one_batch] == [64]  # one ACK per batch read
    in_batches_of_16 = _acks_for([list(range(i, i + 16)) for i in range(0, 64, 16)])
    assert [a.cumulative for a in in_batches_of_16] == [16, 32, 48, 64]


def test_fewer_than_8_chunks_are_acked_5_ms_after_the_first() -> None:
    session = Session(
        session_id=1,
        size=100 * 1400,
        sending=False,
        config=SessionConfig(chunk_bytes=1400, window=4096, give_up_s=5),
        now=0.0,
    )
    for seq in range(3):
        session.receive_data(seq, seq, memoryview(bytes(1400)), 0.001 * seq)
        assert session.datagrams(0.001 * seq) == []
    assert session.get_timer() == pytest.approx(0.005)
    [ack] = [pk.decode_untrusted(d)[1] for d in session.datagrams(0.005)]
    assert isinstance(ack, pk.Ack) and ack.cumulative == 3 and ack.delay_us == 5000


def test_a_gap_a_filled_gap_and_a_duplicate_are_acked_at_once() -> None:
    acks = _acks_for([[0], [2], [1], [1], [3]])
    assert [(a.cumulative, a.ranges) for a in acks] == [
        (1, ((2, 3),)),  # chunk 2 opened a gap
        (3, ()),  # chunk 1 filled it
        (3, ()),  # a duplicate of chunk 1
    ]  # chunk 3: in order, the first of the next 8: no ACK yet


def test_the_handshake_rtt_is_timed_from_when_the_initial_leaves_not_when_it_was_made() -> None:
    """A client makes its request, then imports, opens a socket or fetches a ticket
    before the INITIAL goes out: that wait is no part of the round trip (it was
    taken as 9-18 ms of RTT on loopback)."""
    from ftransfer.proto.udp.handshake import ClientRequest

    config = SessionConfig(chunk_bytes=1400, window=64, give_up_s=5)
    request = ClientRequest(
        operation=pk.Operation.GET,
        path="f",
        size=0,
        mtime_ns=-1,
        config=config,
        rng=random.Random(1),
        now=0.0,
        server=("10.0.0.1", 9),
    )
    [(datagram, _to)] = request.datagrams_to_send(5.0)  # it leaves five seconds later
    _session, initial = pk.decode_untrusted(datagram)
    assert isinstance(initial, pk.Initial)
    accept = pk.Accept(
        nonce=initial.nonce, code=0, chunk_bytes=1400, window=64, size=3, mtime_ns=-1, message=""
    )
    request.receive_datagram(pk.encode(77, accept), ("10.0.0.1", 9), 5.002)
    assert request.session is not None and request.session.rtt.srtt == pytest.approx(0.002)
