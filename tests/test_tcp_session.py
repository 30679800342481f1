"""TCP session state machine, without sockets.

Every exchange is fed three ways (h11's discipline): whole, one byte at a time, and
with the next exchange's bytes trailing in the same read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftransfer.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role, StreamState
from ftransfer.proto.tcp.frames import FrameType, encode, header

D1, D2 = b"\x01" * 16, b"\x02" * 16
HELLO = ev.HelloOffered(min_version=4, max_version=4)
ACCEPT = ev.HelloAccepted(version=1, max_frame_bytes=4 << 20, read_only=False)


def drain(conn: Connection) -> list[ev.Event | ev.ConnectionClosed]:
    """All events available now; FileData copied to bytes (views die on next read)."""
    out: list[ev.Event | ev.ConnectionClosed] = []
    while True:
        event = conn.next_event()
        if isinstance(event, ev.NeedData):
            return out
        if isinstance(event, ev.FileData):
            event = ev.FileData(data=bytes(event.data))
        out.append(event)
        if isinstance(event, ev.ConnectionClosed):
            return out


def merge_data(events: Iterable[ev.Event | ev.ConnectionClosed]) -> list[object]:
    """Adjacent FileData joined, so split deliveries compare equal."""
    out: list[object] = []
    for event in events:
        if isinstance(event, ev.FileData) and out and isinstance(out[-1], ev.FileData):
            out[-1] = ev.FileData(data=bytes(out[-1].data) + bytes(event.data))
        else:
            out.append(event)
    return out


Feeder = Callable[[Connection, bytes], list[ev.Event | ev.ConnectionClosed]]


def feed_whole(conn: Connection, wire: bytes) -> list[ev.Event | ev.ConnectionClosed]:
    if not wire:
        return []  # an empty read would mean end of stream
    conn.receive_data(wire)
    return drain(conn)


def feed_bytewise(conn: Connection, wire: bytes) -> list[ev.Event | ev.ConnectionClosed]:
    out: list[ev.Event | ev.ConnectionClosed] = []
    for i in range(len(wire)):
        conn.receive_data(wire[i : i + 1])
        out.extend(drain(conn))
    return out


FEEDERS = [feed_whole, feed_bytewise]


def client_wire(*events: ev.Event) -> tuple[Connection, bytes]:
    client = Connection(Role.CLIENT)
    return client, b"".join(client.send(e) for e in events)


UPLOAD: list[ev.Event] = [
    HELLO,
    ev.PutRequested(path="f", size=5, mtime_ns=-1, mode=0o644, exclusive=False),
    ev.FileData(data=b"he"),
    ev.FileData(data=b"llo"),
    ev.FileEnded(digest=D1),
    ev.GetRequested(path="g"),
    ev.StatRequested(path=""),
]


@pytest.mark.parametrize("feed", FEEDERS)
def test_server_receives_pipelined_requests(feed: Feeder) -> None:
    _client, wire = client_wire(*UPLOAD)
    server = Connection(Role.SERVER)
    assert merge_data(feed(server, wire)) == merge_data(UPLOAD)
    assert server.pending_requests == 4  # HELLO, PUT, GET and STAT, none answered yet
    assert server.request_state is StreamState.IDLE


def test_trailing_data_is_kept_for_the_next_event() -> None:
    _client, wire = client_wire(*UPLOAD)
    server = Connection(Role.SERVER)
    cut = len(wire) - 3  # the last frame arrives split across two reads
    got = feed_whole(server, wire[:cut])
    assert merge_data(got) == merge_data(UPLOAD[:-1])
    server.receive_data(wire[cut:])
    assert drain(server) == [UPLOAD[-1]]


def test_receive_data_before_draining_is_a_local_error() -> None:
    _client, wire = client_wire(*UPLOAD)
    server = Connection(Role.SERVER)
    server.receive_data(wire)
    server.next_event()
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")


@pytest.mark.parametrize("feed", FEEDERS)
def test_client_receives_replies_in_order(feed: Feeder) -> None:
    client, _wire = client_wire(*UPLOAD)
    server = Connection(Role.SERVER)
    server.receive_data(_wire)
    drain(server)
    replies: list[ev.Event] = [
        ACCEPT,
        ev.PutCommitted(digest=D1),
        ev.FileStarted(size=3, mtime_ns=7, mode=0o644),
        ev.FileData(data=b"abc"),
        ev.FileEnded(digest=D2),
        ev.Stated(
            entry=ev.Entry(name="", kind=ev.EntryKind.DIRECTORY, size=0, mtime_ns=1, mode=0o755),
            digest=bytes(16),
        ),
    ]
    wire = b"".join(server.send(r) for r in replies)
    assert merge_data(feed(client, wire)) == merge_data(replies)
    assert client.pending_requests == 0 and server.pending_requests == 0


def test_more_data_than_declared_is_refused() -> None:
    server = Connection(Role.SERVER)
    _c, wire = client_wire(
        HELLO, ev.PutRequested(path="f", size=2, mtime_ns=-1, mode=0o644, exclusive=False)
    )
    wire += header(FrameType.DATA, 3) + b"abc"
    server.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="more bytes than"):
        drain(server)
    with pytest.raises(RemoteProtocolError):  # once broken, always broken
        server.next_event()


def test_end_before_all_declared_bytes_is_refused() -> None:
    server = Connection(Role.SERVER)
    _c, wire = client_wire(
        HELLO, ev.PutRequested(path="f", size=2, mtime_ns=-1, mode=0o644, exclusive=False)
    )
    wire += header(FrameType.DATA, 1) + b"a" + encode(ev.FileEnded(digest=D1))
    server.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="missing"):
        drain(server)


def test_sender_cannot_overrun_its_own_declared_size() -> None:
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    client.send(ev.PutRequested(path="f", size=2, mtime_ns=-1, mode=0o644, exclusive=False))
    with pytest.raises(LocalProtocolError):
        client.start_data(3)
    client.start_data(2)
    client.send(ev.FileEnded(digest=D1))


def test_refused_upload_is_discarded_by_the_core() -> None:
    server = Connection(Role.SERVER)
    _c, wire = client_wire(
        HELLO,
        ev.PutRequested(path="f", size=4, mtime_ns=-1, mode=0o644, exclusive=False),
        ev.FileData(data=b"ab"),
    )
    server.receive_data(wire)
    assert [type(e) for e in drain(server)] == [ev.HelloOffered, ev.PutRequested, ev.FileData]
    server.send(ACCEPT)
    server.send(ev.Failed(code=21, message="no space"))  # refused mid-upload
    rest = encode(ev.FileData(data=b"cd")) + encode(ev.FileEnded(digest=D1))
    rest += encode(ev.GetRequested(path="next"))
    server.receive_data(rest)
    assert drain(server) == [ev.GetRequested(path="next")]


def test_commit_before_the_upload_ends_is_a_local_error() -> None:
    server = Connection(Role.SERVER)
    _c, wire = client_wire(
        HELLO, ev.PutRequested(path="f", size=4, mtime_ns=-1, mode=0o644, exclusive=False)
    )
    server.receive_data(wire)
    drain(server)
    server.send(ACCEPT)
    with pytest.raises(LocalProtocolError, match="before the upload ended"):
        server.send(ev.PutCommitted(digest=D1))


def test_reply_must_answer_the_oldest_request() -> None:
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    client.send(ev.GetRequested(path="a"))
    server = Connection(Role.SERVER)
    wire = encode(ACCEPT) + encode(ev.Done())  # OK cannot answer GET
    client.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="cannot answer GetRequested"):
        drain(client)
    del server


def test_reply_without_request_is_refused() -> None:
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    client.receive_data(encode(ACCEPT) + encode(ev.Done()))
    with pytest.raises(RemoteProtocolError, match="no outstanding request"):
        drain(client)


def test_busy_refusal_before_hello_is_allowed() -> None:
    server = Connection(Role.SERVER)
    wire = server.send(ev.Failed(code=41, message="busy"))
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    client.receive_data(wire)
    assert drain(client) == [ev.Failed(code=41, message="busy")]
    assert client.reply_state is StreamState.CLOSED


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (encode(ev.GetRequested(path="a")), "GET is not allowed before HELLO"),
        (encode(HELLO) + encode(HELLO), "HELLO is not allowed between requests"),
        (encode(HELLO) + encode(ev.FileEnded(digest=D1)), "END is not allowed between requests"),
        (encode(HELLO) + header(FrameType.DATA, 1) + b"x", "DATA is not allowed between requests"),
        (encode(HELLO) + encode(ev.Done()), "not allowed"),
    ],
)
def test_out_of_order_requests_are_refused(wire: bytes, message: str) -> None:
    server = Connection(Role.SERVER)
    server.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match=message):
        drain(server)


def test_clean_close_at_a_frame_boundary() -> None:
    server = Connection(Role.SERVER)
    _c, wire = client_wire(HELLO, ev.GetRequested(path="a"))
    server.receive_data(wire)
    drain(server)
    server.receive_data(b"")
    assert drain(server) == [ev.ConnectionClosed()]


@pytest.mark.parametrize("cut", [1, 4, 6, 9])
def test_close_mid_frame_is_an_error(cut: int) -> None:
    server = Connection(Role.SERVER)
    server.receive_data(encode(HELLO)[:cut])
    drain(server)
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        drain(server)


def test_close_mid_file_is_an_error() -> None:
    server = Connection(Role.SERVER)
    _c, wire = client_wire(
        HELLO, ev.PutRequested(path="f", size=4, mtime_ns=-1, mode=0o644, exclusive=False)
    )
    server.receive_data(wire)
    drain(server)
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a file"):
        drain(server)


# ---- hypothesis: any sequence of request events ----------------------------------------

REQUEST_EVENTS = st.one_of(
    st.just(HELLO),
    st.builds(
        ev.PutRequested,
        path=st.just("f"),
        size=st.integers(0, 6),
        mtime_ns=st.just(-1),
        mode=st.integers(0, 0o777),
        exclusive=st.booleans(),
    ),
    st.builds(ev.FileData, data=st.binary(min_size=1, max_size=4)),
    st.just(ev.FileEnded(digest=D1)),
    st.just(ev.FileAborted()),
    st.just(ev.GetRequested(path="g")),
    st.just(ev.DownloadVerified(digest=D2)),
    st.just(ev.ListRequested(path="")),
    st.just(ev.MkdirRequested(path="d", parents=False)),
    st.just(ev.Done()),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(REQUEST_EVENTS, max_size=12), st.sampled_from(FEEDERS))
def test_sender_and_receiver_agree_on_every_sequence(events: list[ev.Event], feed: Feeder) -> None:
    """The client's send() accepts a prefix iff the server's parser accepts it, and
    the server then sees exactly those events; the rest raises only protocol errors."""
    client = Connection(Role.CLIENT)
    accepted: list[ev.Event] = []
    wire = b""
    for event in events:
        try:
            wire += client.send(event)
        except LocalProtocolError:
            break
        accepted.append(event)
    server = Connection(Role.SERVER)
    assert merge_data(feed(server, wire)) == merge_data(accepted)
    if len(accepted) < len(events):  # the raw frame of the refused event fails remotely too
        bad = events[len(accepted)]
        raw = (
            (header(FrameType.DATA, len(bad.data)) + bytes(bad.data))
            if isinstance(bad, ev.FileData)
            else encode(bad)
        )
        with pytest.raises(RemoteProtocolError):
            feed(server, raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(noise: bytes) -> None:
    for role in Role:
        conn = Connection(role)
        try:
            feed_whole(conn, noise)
            conn.receive_data(b"")
            drain(conn)
        except ProtocolError:
            pass


def test_a_server_ends_a_broken_connection_with_one_error_frame() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(
        encode(HELLO) + encode(ev.HelloAccepted(version=4, max_frame_bytes=1, read_only=False))
    )
    with pytest.raises(RemoteProtocolError, match="not allowed"):
        drain(server)  # a server-only frame from the client
    wire = server.close_with_error(1, "protocol error: HelloAccepted is not allowed")
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    client.receive_data(wire)
    assert drain(client) == [
        ev.Failed(code=1, message="protocol error: HelloAccepted is not allowed")
    ]
    with pytest.raises(LocalProtocolError):
        server.close_with_error(1, "twice")
    with pytest.raises(LocalProtocolError):
        server.send(ev.Done())  # nothing after the last frame


def test_an_error_may_end_a_download_in_place_of_end() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(encode(HELLO) + encode(ev.GetRequested(path="g")))
    drain(server)
    wire = server.send(ev.HelloAccepted(version=4, max_frame_bytes=1, read_only=False))
    wire += server.send(ev.FileStarted(size=10, mtime_ns=0, mode=0o644))
    wire += server.close_with_error(42, "timed out")  # mid-file, at a frame boundary
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    client.send(ev.GetRequested(path="g"))
    client.receive_data(wire)
    events = drain(client)
    assert events[-1] == ev.Failed(code=42, message="timed out")


def test_only_a_server_closes_with_an_error() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Role.CLIENT).close_with_error(1, "no")


def test_a_local_protocol_error_breaks_the_connection() -> None:
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    with pytest.raises(LocalProtocolError):
        client.send(ev.FileEnded(digest=D1))  # no upload in progress
    with pytest.raises(LocalProtocolError, match="broken"):
        client.send(ev.GetRequested(path="g"))


# ---- a bad frame after a valid HELLO: ERROR 1 with the reason, then the close -------------

_PUT_HEAD = struct.Struct(">QqBH")  # size, mtime_ns, flags, mode (protocol.md, PUT)


def _put_frame(size: int, mtime_ns: int) -> bytes:
    payload = _PUT_HEAD.pack(size, mtime_ns, 0, 0o644) + b"f"
    return header(FrameType.PUT, len(payload)) + payload


BAD_AFTER_HELLO = {
    "server-only frame": (encode(ev.Done()), "OK is not allowed between requests"),
    "absurd length": (header(FrameType.GET, 0xFFFFFFFF), "exceeds 4194304"),
    "control frame over 64 KiB": (header(FrameType.GET, (64 << 10) + 1), "exceeds 65536"),
    "unknown type": (bytes([0x99]) + b"\0\0\0\0", "unknown frame type 0x99"),
    "bad UTF-8 path": (header(FrameType.GET, 2) + b"\xff\xfe", "GET path is not valid UTF-8"),
    "size 2^63": (_put_frame(2**63, -1), "PUT size is out of range"),
    "mtime_ns below -1": (_put_frame(1, -2), "mtime_ns -2 is below -1"),
    "second HELLO": (encode(HELLO), "HELLO is not allowed between requests"),
    "bad frame mid-upload": (
        _put_frame(10, -1) + header(FrameType.DATA, 3) + b"abc" + header(FrameType.GET, 1 << 30),
        "exceeds 4194304",
    ),
}


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("case", list(BAD_AFTER_HELLO))
def test_a_bad_frame_after_hello_ends_the_connection_with_error_1_and_the_reason(
    case: str, feed: Feeder
) -> None:
    bad, reason = BAD_AFTER_HELLO[case]
    server = Connection(Role.SERVER)
    assert feed(server, encode(HELLO)) == [HELLO]
    wire = server.send(ACCEPT)
    with pytest.raises(RemoteProtocolError, match=reason) as refused:
        feed(server, bad)
    with pytest.raises(RemoteProtocolError):
        server.next_event()  # broken: it refuses more work
    wire += server.close_with_error(1, f"protocol error: {refused.value}")  # a frame boundary
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    client.receive_data(wire)
    events = drain(client)
    assert events[0] == ACCEPT and len(events) == 2
    assert isinstance(events[1], ev.Failed) and events[1].code == 1
    assert reason in events[1].message


def test_mtime_ns_minus_one_is_the_servers_clock_and_an_earlier_time_is_sent_as_it() -> None:
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    server = Connection(Role.SERVER)
    for sent, received in [(-1, -1), (0, 0), (-2_000_000_000, -1)]:
        put = ev.PutRequested(path="f", size=0, mtime_ns=sent, mode=0o644, exclusive=False)
        wire = client.send(put) + client.send(ev.FileEnded(digest=D1))
        events = feed_whole(server, (encode(HELLO) if sent == -1 else b"") + wire)
        [got] = [e for e in events if isinstance(e, ev.PutRequested)]
        assert got.mtime_ns == received  # before 1970 cannot be carried: the server's clock
