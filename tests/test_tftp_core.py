"""The TFTP core without sockets: codec, negotiation, netascii, and whole transfers
between a ``TftpClient`` and the server-side machines over a seeded, virtual-time
link that drops, duplicates and reorders exactly as its seed says."""

from __future__ import annotations

import contextlib
import heapq
import io
import itertools
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftransfer.errors import IntegrityError, RemoteProtocolError, TransferTimeout
from ftransfer.proto.events import Completed, DataReceived, Failed
from ftransfer.proto.tftp import netascii
from ftransfer.proto.tftp.client import TftpClient
from ftransfer.proto.tftp.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Limits,
    OptionAck,
    OptionError,
    Params,
    Request,
    TftpPacketError,
    check_oack,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
    encode_request,
    negotiate,
    parse_untrusted,
)
from ftransfer.proto.tftp.receiver import BlockReceiver
from ftransfer.proto.tftp.sender import BlockSender
from ftransfer.proto.tftp.transfer import Address

CLIENT: Address = ("10.0.0.1", 5000)
LISTENER: Address = ("10.0.0.2", 69)
TID: Address = ("10.0.0.2", 40000)


# ---- codec -----------------------------------------------------------------------------


def test_request_round_trip_lowercases_mode_and_option_names() -> None:
    raw = b"\x00\x01dir/f.bin\x00OCTET\x00BlkSize\x001428\x00tsize\x000\x00"
    packet = parse_untrusted(raw)
    assert packet == Request(
        write=False, filename="dir/f.bin", mode="octet", options={"blksize": "1428", "tsize": "0"}
    )
    assert parse_untrusted(encode_request(packet)) == packet


def test_each_packet_kind_parses() -> None:
    assert parse_untrusted(encode_data(70000, b"abc")) == Data(block=70000 & 0xFFFF, payload=b"abc")
    assert parse_untrusted(encode_ack(3)) == Ack(block=3)
    assert parse_untrusted(encode_error(1, "nope")) == Error(code=1, message="nope")
    assert parse_untrusted(encode_oack({"blksize": "512"})) == OptionAck(options={"blksize": "512"})
    assert parse_untrusted(b"\x00\x05\x00\x02no nul") == Error(code=2, message="no nul")  # lenient


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        b"\x00\x01name\x00",  # no mode
        b"\x00\x01name\x00octet",  # no final NUL
        b"\x00\x01name\x00octet\x00blksize\x00",  # option without value
        b"\x00\x01\xff\xfe\x00octet\x00",  # filename not UTF-8
        b"\x00\x03\x00",  # DATA without a whole block number
        b"\x00\x04",
        b"\x00\x09\x00\x01",  # unknown opcode
        b"\x00\x06blksize\x00\xff\x00",  # non-ASCII option value
    ],
)
def test_malformed_packets_raise_only_the_packet_error(raw: bytes) -> None:
    with pytest.raises(TftpPacketError):
        parse_untrusted(raw)


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_the_packet_error(raw: bytes) -> None:
    with contextlib.suppress(TftpPacketError):
        parse_untrusted(raw)


# ---- negotiation -----------------------------------------------------------------------


def test_server_clamps_ignores_and_answers() -> None:
    limits = Limits(max_blksize=8192, max_windowsize=16)
    options = {"blksize": "65464", "windowsize": "64", "timeout": "3", "tsize": "0", "x": "1"}
    params, accepted = negotiate(options, limits, write=False, file_size=1234)
    assert params == Params(blksize=8192, windowsize=16, timeout_s=3.0, tsize=1234)
    assert accepted == {"blksize": "8192", "windowsize": "16", "timeout": "3", "tsize": "1234"}


@pytest.mark.parametrize(
    "options",
    [
        {"blksize": "7"},
        {"blksize": "abc"},
        {"windowsize": "0"},
        {"timeout": "0"},
        {"timeout": "256"},
    ],
)
def test_out_of_range_options_are_ignored(options: dict[str, str]) -> None:
    params, accepted = negotiate(options, Limits(), write=False, file_size=1)
    assert accepted == {} and params == Params()


def test_tsize_on_write_is_the_clients_and_unknown_reads_ignore_it() -> None:
    assert negotiate({"tsize": "99"}, Limits(), write=True, file_size=None)[0].tsize == 99
    assert negotiate({"tsize": "0"}, Limits(), write=False, file_size=None)[1] == {}


def test_client_refuses_an_oack_that_raises_or_invents_options() -> None:
    with pytest.raises(OptionError):
        check_oack({"blksize": "1024"}, {"blksize": "2048"})
    with pytest.raises(OptionError):
        check_oack({"blksize": "1024"}, {"windowsize": "4"})
    assert check_oack({"blksize": "1024", "tsize": "0"}, {"tsize": "5"}) == Params(tsize=5)


# ---- netascii --------------------------------------------------------------------------


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_netascii_round_trips_across_any_block_split(data: bytes, cuts: list[int]) -> None:
    wire = netascii.encode(data)
    decoder = netascii.Decoder()
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in itertools.pairwise([0, *points, len(wire)])]
    assert b"".join(decoder.feed(p) for p in pieces) + decoder.finish() == data


def test_netascii_wire_form() -> None:
    assert netascii.encode(b"a\nb\rc") == b"a\r\nb\r\0c"
    reader = netascii.encoding_reader(io.BytesIO(b"x\n" * 10).read, chunk=3)
    assert b"".join(iter(lambda: reader(4), b"")) == b"x\r\n" * 10


# ---- a simulated link ------------------------------------------------------------------


@dataclass
class Link:
    """Seeded impairments on virtual time: loss, duplication, reordering (jitter)."""

    seed: int
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay: float = 0.005
    rng: random.Random = field(init=False)
    queue: list[tuple[float, int, bytes, Address, Address]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    sent: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def send(self, now: float, data: bytes, src: Address, dst: Address) -> None:
        self.sent += 1
        for _copy in range(2 if self.rng.random() < self.dup else 1):
            if self.rng.random() < self.loss:
                continue
            late = self.rng.uniform(0, 4 * self.delay) if self.rng.random() < self.reorder else 0
            deliver = now + self.delay + late
            heapq.heappush(self.queue, (deliver, next(self.counter), data, src, dst))


Machine = BlockSender | BlockReceiver


@dataclass
class World:
    """A TftpClient, and a server that negotiates and runs one transfer per request."""

    link: Link
    files: dict[str, bytes]
    limits: Limits = field(default_factory=Limits)
    give_up_s: float = 10.0
    server: Machine | None = None
    requests: int = 0
    stored: bytearray = field(default_factory=bytearray)

    def serve(self, data: bytes, src: Address, now: float) -> None:
        packet = parse_untrusted(data)
        assert isinstance(packet, Request)
        self.requests += 1
        if self.server is not None:
            self.server.request_repeated(now)
            return
        if packet.write:
            params, accepted = negotiate(packet.options, self.limits, write=True, file_size=None)
            first = encode_oack(accepted) if accepted else encode_ack(0)
            self.server = BlockReceiver(
                src, params, now=now, give_up_s=self.give_up_s, first=first, linger_s=2.0
            )
        else:
            body = self.files[packet.filename]
            params, accepted = negotiate(
                packet.options, self.limits, write=False, file_size=len(body)
            )
            oack = encode_oack(accepted) if accepted else None
            self.server = BlockSender(
                io.BytesIO(body).read, src, params, now=now, give_up_s=self.give_up_s, oack=oack
            )

    def run(self, client: TftpClient, limit_s: float = 3600.0) -> tuple[bytes, list[object]]:
        received = bytearray()
        outcome: list[object] = []
        now = 0.0
        while now < limit_s:
            self._flush(client, now, received, outcome)
            server_done = self.server is None or self.server.finished
            if client.finished and server_done and not self.link.queue:
                break
            times = [t for t in (client.get_timer(),) if t is not None]
            if self.server is not None and (t := self.server.get_timer()) is not None:
                times.append(t)
            if self.link.queue:
                times.append(self.link.queue[0][0])
            if not times:
                break
            now = max(now, min(times))
            while self.link.queue and self.link.queue[0][0] <= now:
                _t, _n, data, src, dst = heapq.heappop(self.link.queue)
                if dst == LISTENER:
                    self.serve(data, src, now)
                elif dst == CLIENT:
                    client.receive_datagram(data, src, now)
                elif self.server is not None and dst == TID:
                    self.server.receive_datagram(data, src, now)
            for machine in (client, self.server):
                if machine is not None and (t := machine.get_timer()) is not None and t <= now:
                    machine.handle_timer(now)
        return bytes(received), outcome

    def _flush(
        self, client: TftpClient, now: float, received: bytearray, out: list[object]
    ) -> None:
        while (event := client.next_event()) is not None:
            out.append(event)
            if isinstance(event, DataReceived):
                received += event.data
                if event.final:
                    client.accept_final(now)
        while self.server is not None and (event := self.server.next_event()) is not None:
            if isinstance(event, DataReceived):
                self.stored += event.data
                if event.final:
                    assert isinstance(self.server, BlockReceiver)
                    self.server.accept_final(now)
        for data, dst in client.datagrams_to_send(now):
            self.link.send(now, data, CLIENT, dst)
        if self.server is not None:
            for data, dst in self.server.datagrams_to_send(now):
                self.link.send(now, data, TID, dst)


def client_for(request: Request, body: bytes | None = None, give_up_s: float = 10.0) -> TftpClient:
    read = io.BytesIO(body).read if body is not None else None
    return TftpClient(request, LISTENER, now=0.0, give_up_s=give_up_s, read=read)


def options(blksize: int, window: int) -> dict[str, str]:
    return {"blksize": str(blksize), "windowsize": str(window), "tsize": "0"}


SIZES = [0, 1, 511, 512, 513, 20_000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("window", [1, 8])
@pytest.mark.parametrize("loss", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_get_is_byte_exact_through_loss_dup_and_reordering(
    size: int, window: int, loss: float, seed: int
) -> None:
    body = random.Random(seed).randbytes(size)
    world = World(Link(seed, loss=loss, dup=0.05, reorder=0.1), {"f": body})
    client = client_for(
        Request(write=False, filename="f", mode="octet", options=options(512, window))
    )
    received, events = world.run(client)
    assert received == body
    assert isinstance(events[-1], Completed), events[-1]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("window", [1, 8])
@pytest.mark.parametrize("loss", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_put_is_byte_exact_through_loss_dup_and_reordering(
    size: int, window: int, loss: float, seed: int
) -> None:
    body = random.Random(seed).randbytes(size)
    world = World(Link(seed, loss=loss, dup=0.05, reorder=0.1), {})
    asked = options(512, window) | {"tsize": str(size)}
    client = client_for(Request(write=True, filename="f", mode="octet", options=asked), body)
    _received, events = world.run(client)
    assert bytes(world.stored) == body
    assert isinstance(events[-1], Completed), events[-1]


@pytest.mark.parametrize("window", [1, 16])
def test_block_numbers_roll_over_past_65535(window: int) -> None:
    body = random.Random(7).randbytes(8 * 70_000 + 3)  # 70,001 blocks of 8 bytes
    world = World(Link(7, loss=0.01 if window > 1 else 0.0), {"big": body})
    client = client_for(
        Request(write=False, filename="big", mode="octet", options=options(8, window))
    )
    received, _events = world.run(client)
    assert received == body


def test_duplicates_alone_never_cause_a_retransmission() -> None:
    """The overhead bound at 0 % loss + 10 % duplication: nothing is sent twice."""
    body = random.Random(5).randbytes(100_000)
    world = World(Link(5, dup=0.10), {"f": body})
    client = client_for(Request(write=False, filename="f", mode="octet", options=options(512, 1)))
    received, _events = world.run(client)
    assert received == body
    assert world.server is not None and world.server.stats.retransmitted == 0
    assert world.server.stats.duplicates > 0  # the duplicate ACKs arrived, and were ignored


def test_server_ignoring_options_gives_plain_rfc1350() -> None:
    body = random.Random(3).randbytes(5000)
    world = World(Link(3), {"f": body})
    client = client_for(Request(write=False, filename="f", mode="octet", options={}))
    received, _events = world.run(client)
    assert received == body and client.params == Params()


# ---- the rules, one at a time ----------------------------------------------------------


def sender(body: bytes = b"x" * 2000, **kwargs: object) -> BlockSender:
    return BlockSender(io.BytesIO(body).read, CLIENT, Params(), now=0.0, give_up_s=5.0, **kwargs)  # type: ignore[arg-type]


def test_duplicate_ack_sends_nothing_sorcerers_apprentice() -> None:
    s = sender(proven=True)
    assert [d[:4] for d, _a in s.datagrams_to_send(0.0)] == [encode_data(1, b"")[:4]]
    s.receive_datagram(encode_ack(1), CLIENT, 0.01)
    assert len(s.datagrams_to_send(0.0)) == 1  # DATA 2
    for _ in range(5):
        s.receive_datagram(encode_ack(1), CLIENT, 0.02)
    assert s.datagrams_to_send(0.0) == []
    assert s.stats.duplicates == 5


def test_ack_for_a_block_never_sent_is_ignored() -> None:
    s = sender(proven=True)
    s.datagrams_to_send(0.0)
    s.receive_datagram(encode_ack(3), CLIENT, 0.01)
    assert s.datagrams_to_send(0.0) == [] and not s.finished


def test_unproven_peer_gets_no_retransmission_only_answers_to_repeats() -> None:
    s = sender()
    assert len(s.datagrams_to_send(0.0)) == 1
    now = 0.0
    while (deadline := s.get_timer()) is not None:
        now = deadline
        s.handle_timer(now)
        assert s.datagrams_to_send(0.0) == [] or s.finished
    assert isinstance(s.next_event(), Failed) and now >= 5.0
    fresh = sender()
    fresh.datagrams_to_send(0.0)
    fresh.request_repeated(0.5)
    assert len(fresh.datagrams_to_send(0.0)) == 1


def test_proven_peer_gets_timeout_retransmissions_with_backoff() -> None:
    s = sender(proven=True)
    s.datagrams_to_send(0.0)
    first = s.get_timer()
    assert first is not None
    s.handle_timer(first)
    assert len(s.datagrams_to_send(0.0)) == 1 and s.stats.timeouts == 1
    second = s.get_timer()
    assert second is not None and second - first >= first  # doubled
    assert second - first <= 1.0  # bounded by the (default) negotiated timeout


def test_datagram_from_another_port_gets_error_5_and_changes_nothing() -> None:
    s = sender(proven=True)
    s.datagrams_to_send(0.0)
    stranger = (CLIENT[0], CLIENT[1] + 1)
    s.receive_datagram(encode_ack(1), stranger, 0.01)
    (reply,) = s.datagrams_to_send(0.0)
    assert reply[1] == stranger and parse_untrusted(reply[0]) == Error(
        code=5, message="unknown transfer id"
    )
    assert s.stats.strangers == 1 and s._acked == 0


def test_lost_final_ack_is_answered_while_lingering() -> None:
    r = BlockReceiver(CLIENT, Params(), now=0.0, give_up_s=5.0, first=encode_ack(0), linger_s=2.0)
    r.datagrams_to_send(0.0)
    r.receive_datagram(encode_data(1, b"end"), CLIENT, 0.1)
    assert r.next_event() == DataReceived(data=b"end", final=True)
    assert r.datagrams_to_send(0.0) == []  # no ACK before the commit
    r.accept_final(0.2)
    assert r.datagrams_to_send(0.0) == [(encode_ack(1), CLIENT)]
    r.receive_datagram(encode_data(1, b"end"), CLIENT, 1.0)  # the client did not get it
    assert r.datagrams_to_send(0.0) == [(encode_ack(1), CLIENT)]
    r.handle_timer(2.3)
    assert r.finished


def test_more_than_announced_tsize_ends_the_transfer() -> None:
    r = BlockReceiver(CLIENT, Params(blksize=8, tsize=10), now=0.0, give_up_s=5.0, proven=True)
    r.receive_datagram(encode_data(1, b"12345678"), CLIENT, 0.1)
    r.receive_datagram(encode_data(2, b"12345678"), CLIENT, 0.2)
    events = [r.next_event(), r.next_event()]
    assert isinstance(events[1], Failed) and events[1].code == IntegrityError.code
    assert parse_untrusted(r.datagrams_to_send(0.0)[-1][0]).code == 0  # type: ignore[union-attr]


def test_oversized_block_is_a_protocol_error() -> None:
    r = BlockReceiver(CLIENT, Params(blksize=8), now=0.0, give_up_s=5.0, proven=True)
    r.receive_datagram(encode_data(1, b"x" * 9), CLIENT, 0.1)
    event = r.next_event()
    assert isinstance(event, Failed) and event.code == RemoteProtocolError.code


def test_malformed_datagrams_from_the_peer_are_counted_not_raised() -> None:
    s = sender(proven=True)
    for junk in (b"", b"\x00", b"\x01\x02\x03\x04", b"\x00\x07\x00\x00", b"\x00\x04\x00"):
        s.receive_datagram(junk, CLIENT, 0.01)
    assert s.stats.malformed == 5 and not s.finished


def test_client_falls_back_without_options_when_refused() -> None:
    c = client_for(Request(write=False, filename="f", mode="octet", options=options(1428, 32)))
    assert len(c.datagrams_to_send(0.0)) == 1
    c.receive_datagram(encode_error(ErrorCode.OPTION_REFUSED, "no options"), TID, 0.01)
    (again,) = c.datagrams_to_send(0.0)
    assert parse_untrusted(again[0]) == Request(write=False, filename="f", mode="octet", options={})
    c.receive_datagram(encode_data(1, b"tiny"), TID, 0.02)
    assert c.next_event() == DataReceived(data=b"tiny", final=True)


def test_client_rejects_an_oack_raising_its_blksize() -> None:
    c = client_for(Request(write=False, filename="f", mode="octet", options=options(1024, 1)))
    c.datagrams_to_send(0.0)
    c.receive_datagram(encode_oack({"blksize": "4096"}), TID, 0.01)
    event = c.next_event()
    assert isinstance(event, Failed) and event.code == RemoteProtocolError.code
    (reply,) = c.datagrams_to_send(0.0)
    assert parse_untrusted(reply[0]).code == ErrorCode.OPTION_REFUSED  # type: ignore[union-attr]


def test_client_gives_up_on_a_silent_server() -> None:
    c = client_for(Request(write=False, filename="f", mode="octet", options={}), give_up_s=3.0)
    sent = 0
    while (deadline := c.get_timer()) is not None:
        sent += len(c.datagrams_to_send(0.0))
        c.handle_timer(deadline)
    event = c.next_event()
    assert isinstance(event, Failed) and event.code == TransferTimeout.code
    assert 2 <= sent <= 3  # the request, repeated with backoff (1 s, 2 s)


def test_a_tsize_of_many_digits_is_read_not_ignored() -> None:
    """An upload announcing 2^41 bytes must be seen as that large (the server then
    refuses it before any data), not as "no tsize" (which let it dodge the limit)."""
    params, accepted = negotiate({"tsize": str(2**41)}, Limits(), write=True, file_size=None)
    assert params.tsize == 2**41 and accepted == {"tsize": str(2**41)}
    huge = "9" * 21  # more digits than any 64-bit size: larger than any limit
    assert negotiate({"tsize": huge}, Limits(), write=True, file_size=None)[0].tsize == 2**64
    assert negotiate({"tsize": huge}, Limits(), write=False, file_size=5)[0].tsize is None


def test_an_abort_tells_only_a_peer_that_proved_its_address() -> None:
    unproven = sender()
    unproven.datagrams_to_send(0.0)
    unproven.abort(ErrorCode.NOT_DEFINED, "evicted")
    assert unproven.datagrams_to_send(0.0) == [] and unproven.finished
    proven = sender(proven=True)
    proven.datagrams_to_send(0.0)
    proven.abort(ErrorCode.NOT_DEFINED, "server shutting down")
    [(error, to)] = proven.datagrams_to_send(0.0)
    assert to == CLIENT and parse_untrusted(error) == Error(code=0, message="server shutting down")


def test_a_receiver_whose_peer_never_answered_gives_up_in_silence() -> None:
    r = BlockReceiver(CLIENT, Params(), now=0.0, give_up_s=5.0, first=encode_ack(0))
    r.datagrams_to_send(0.0)
    r.handle_timer(5.0)
    assert r.finished and r.datagrams_to_send(5.0) == []
    assert isinstance(r.next_event(), Failed)


def test_accepting_a_final_block_that_never_came_is_a_local_error() -> None:
    from ftransfer.errors import LocalProtocolError
    from ftransfer.proto.tftp.transfer import State

    r = BlockReceiver(CLIENT, Params(), now=0.0, give_up_s=5.0, proven=True)
    with pytest.raises(LocalProtocolError, match="stored"):
        r.accept_final(0.1)
    assert r.state is State.ERROR and r.finished


@pytest.mark.parametrize("window", [None, "64"])
def test_a_10_byte_rrq_costs_one_516_byte_reply_until_the_peer_acks(window: str | None) -> None:
    """The amplification floor (protocol.md T3): the smallest RRQ gets one block, and
    nothing more (no retransmission, not even an ERROR at the give-up) until an ACK
    from the peer's address; windowsize changes nothing before that."""
    options = {} if window is None else {"windowsize": window}
    wire = encode_request(Request(write=False, filename="f", mode="octet", options=options))
    request = parse_untrusted(wire)
    assert isinstance(request, Request)
    params, accepted = negotiate(request.options, Limits(), write=False, file_size=100_000)
    oack = encode_oack(accepted) if accepted else None
    body = bytes(range(256)) * 400
    core = BlockSender(io.BytesIO(body).read, CLIENT, params, now=0.0, give_up_s=5.0, oack=oack)
    sent = [d for d, _to in core.datagrams_to_send(0.0)]
    now = 0.0
    while (deadline := core.get_timer()) is not None:
        now = deadline
        core.handle_timer(now)
        sent += [d for d, _to in core.datagrams_to_send(now)]
    assert len(sent) == 1 and core.finished and now >= 5.0
    if window is None:
        assert len(wire) == 10 and len(sent[0]) == 516  # 51.6x, once
    else:
        assert parse_untrusted(sent[0]) == OptionAck(options={"windowsize": "64"})
        assert len(sent[0]) <= 2 * len(wire)  # an OACK is about the size of the request
    proven = BlockSender(io.BytesIO(body).read, CLIENT, params, now=0.0, give_up_s=5.0, oack=oack)
    proven.datagrams_to_send(0.0)
    proven.receive_datagram(encode_ack(1 if window is None else 0), CLIENT, 0.01)
    assert len(proven.datagrams_to_send(0.01)) == (1 if window is None else 64)  # then it flows
