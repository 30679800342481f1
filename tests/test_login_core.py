"""LOGIN in the TCP session core, without sockets: the frame, where it may come,
its answers, and HELLO_OK's login_required flag."""

from __future__ import annotations

import pytest

from ftransfer.config import MAX_PASSWORD_BYTES
from ftransfer.errors import LocalProtocolError, RemoteProtocolError
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role, StreamState
from ftransfer.proto.tcp.frames import FrameType, decode_untrusted, encode, header

HELLO = ev.HelloOffered(min_version=4, max_version=4)
ACCEPT = ev.HelloAccepted(version=4, max_frame_bytes=4 << 20, read_only=False, login_required=True)


def drain(conn: Connection) -> list[ev.Event | ev.ConnectionClosed]:
    """All events available now (no FileData is expected in these tests)."""
    out: list[ev.Event | ev.ConnectionClosed] = []
    while not isinstance(event := conn.next_event(), ev.NeedData):
        out.append(event)
        if isinstance(event, ev.ConnectionClosed):
            break
    return out


def opened() -> tuple[Connection, Connection]:
    """A client and a server that have exchanged HELLO and HELLO_OK."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(HELLO))
    assert drain(server) == [HELLO]
    client.receive_data(server.send(ACCEPT))
    assert drain(client) == [ACCEPT]
    return client, server


def login_frame(user: bytes, password: bytes) -> bytes:
    """A LOGIN frame built by hand (no sender's checks)."""
    payload = bytes([len(user)]) + user + password
    return header(FrameType.LOGIN, len(payload)) + payload


# -- the frame ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "correct horse"),
        ("b\u00f6b\u65e5\u672c", "p\u00e4ss w\u00f6rd \U0001f511"),
        ("u" * 255, ""),
        ("alice", "x" * MAX_PASSWORD_BYTES),
        ("alice", "\u00e9" * (MAX_PASSWORD_BYTES // 2)),  # 1024 bytes, 512 characters
        ("alice", "with\x00nul and : colon"),
    ],
)
def test_login_round_trips_client_to_server(user: str, password: str) -> None:
    client, server = opened()
    request = ev.LoginRequested(user=user, password=password)
    data = client.send(request)
    server.receive_data(data)
    (received,) = drain(server)
    assert isinstance(received, ev.LoginRequested)
    assert received.user == user
    assert received.password == password
    assert received == request
    assert server.pending_requests == 1
    assert server.request_state is StreamState.IDLE


def test_login_round_trips_one_byte_at_a_time() -> None:
    client, server = opened()
    request = ev.LoginRequested(user="\u00e5sa", password="p" * MAX_PASSWORD_BYTES)
    data = client.send(request)
    received: list[ev.Event | ev.ConnectionClosed] = []
    for index in range(len(data)):
        server.receive_data(data[index : index + 1])
        received += drain(server)
    assert received == [request]


def test_the_frame_carries_the_user_and_password_bytes() -> None:
    data = encode(ev.LoginRequested(user="\u00e9", password="pw"))
    assert data == login_frame("\u00e9".encode(), b"pw")
    assert data[0] == FrameType.LOGIN


def test_a_password_longer_than_the_limit_is_refused_by_the_sender() -> None:
    client, _server = opened()
    too_long = ev.LoginRequested(user="alice", password="x" * (MAX_PASSWORD_BYTES + 1))
    with pytest.raises(LocalProtocolError) as caught:
        client.send(too_long)
    assert "x" * 16 not in str(caught.value)


def test_a_multibyte_password_over_the_limit_in_bytes_is_refused() -> None:
    client, _server = opened()
    # 513 characters, 1026 bytes: the limit is in bytes, not characters
    with pytest.raises(LocalProtocolError):
        client.send(ev.LoginRequested(user="alice", password="\u00e9" * 513))


def test_a_password_longer_than_the_limit_is_refused_by_the_receiver() -> None:
    _client, server = opened()
    server.receive_data(login_frame(b"alice", b"x" * (MAX_PASSWORD_BYTES + 1)))
    with pytest.raises(RemoteProtocolError, match="password") as caught:
        server.next_event()
    assert "x" * 16 not in str(caught.value)
    assert server.broken is caught.value


@pytest.mark.parametrize("user", ["", "u" * 256])
def test_a_user_name_of_0_or_256_bytes_is_refused_by_the_sender(user: str) -> None:
    client, _server = opened()
    with pytest.raises(LocalProtocolError):
        client.send(ev.LoginRequested(user=user, password="secret"))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "truncated"),
        (b"\x05ali", "truncated"),
        (b"\x00secret", "empty user"),
        (b"\x02\xff\xfesecret", "LOGIN user"),
        (b"\x05alice\xff", "LOGIN password"),
    ],
)
def test_malformed_login_payloads_are_protocol_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_untrusted(FrameType.LOGIN, payload)


def test_login_repr_and_str_hide_the_password() -> None:
    request = ev.LoginRequested(user="alice", password="hunter2-s3cret")
    for text in (repr(request), str(request), f"{request}", repr([request])):
        assert "hunter2-s3cret" not in text
        assert "alice" in text


# -- where LOGIN may come -------------------------------------------------------------------


def test_login_after_another_request_is_refused_by_the_sender() -> None:
    client, _server = opened()
    client.send(ev.StatRequested(path="a"))
    with pytest.raises(LocalProtocolError, match="LOGIN"):
        client.send(ev.LoginRequested(user="alice", password="secret"))
    with pytest.raises(LocalProtocolError):  # the connection is broken from now on
        client.send(ev.StatRequested(path="b"))


def test_login_after_another_request_is_refused_by_the_receiver() -> None:
    _client, server = opened()
    stat = ev.StatRequested(path="a")
    server.receive_data(encode(stat) + encode(ev.LoginRequested(user="alice", password="pw")))
    assert server.next_event() == stat
    with pytest.raises(RemoteProtocolError, match="LOGIN"):
        server.next_event()
    assert isinstance(server.broken, RemoteProtocolError)


def test_a_second_login_is_refused_on_both_sides() -> None:
    client, server = opened()
    login = ev.LoginRequested(user="alice", password="secret")
    server.receive_data(client.send(login))
    assert drain(server) == [login]
    with pytest.raises(LocalProtocolError):
        client.send(login)
    server.receive_data(encode(login))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_login_before_hello_is_refused_on_both_sides() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    login = ev.LoginRequested(user="alice", password="secret")
    with pytest.raises(LocalProtocolError):
        client.send(login)
    server.receive_data(encode(login))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_a_server_cannot_send_login_and_a_client_cannot_receive_it() -> None:
    _client, server = opened()
    with pytest.raises(LocalProtocolError):
        server.send(ev.LoginRequested(user="alice", password="secret"))
    client, _server = opened()
    client.receive_data(encode(ev.LoginRequested(user="alice", password="secret")))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_requests_after_login_are_allowed() -> None:
    client, server = opened()
    login = ev.LoginRequested(user="alice", password="secret")
    stat = ev.StatRequested(path="a")
    server.receive_data(client.send(login) + client.send(stat))
    assert drain(server) == [login, stat]
    assert server.pending_requests == 2


# -- answers to LOGIN ----------------------------------------------------------------------


def test_login_answered_with_ok() -> None:
    client, server = opened()
    server.receive_data(client.send(ev.LoginRequested(user="alice", password="secret")))
    drain(server)
    client.receive_data(server.send(ev.Done()))
    assert drain(client) == [ev.Done()]
    assert client.pending_requests == 0
    assert server.pending_requests == 0
    # and the session goes on
    stat = ev.StatRequested(path="a")
    server.receive_data(client.send(stat))
    assert drain(server) == [stat]


def test_login_answered_with_error_44() -> None:
    client, server = opened()
    server.receive_data(client.send(ev.LoginRequested(user="alice", password="wrong")))
    drain(server)
    refusal = ev.Failed(code=44, message="authentication failed: wrong user name or password")
    client.receive_data(server.send(refusal))
    (answer,) = drain(client)
    assert isinstance(answer, ev.Failed)
    assert answer.code == 44
    assert answer.message == refusal.message
    assert client.pending_requests == 0
    assert client.broken is None


def test_login_answered_with_error_44_that_ends_the_connection() -> None:
    client, server = opened()
    server.receive_data(client.send(ev.LoginRequested(user="alice", password="wrong")))
    drain(server)
    client.receive_data(server.close_with_error(44, "authentication failed"))
    client_events = drain(client)
    assert len(client_events) == 1
    assert isinstance(client_events[0], ev.Failed) and client_events[0].code == 44
    client.receive_data(b"")
    assert drain(client) == [ev.ConnectionClosed()]


@pytest.mark.parametrize(
    "reply",
    [
        ev.PutCommitted(digest=b"\x00" * 16),
        ev.Stated(
            entry=ev.Entry(name="a", kind=ev.EntryKind.FILE, size=0, mtime_ns=0, mode=0o644),
            digest=b"\x00" * 16,
        ),
        ev.ListEnded(),
    ],
)
def test_login_cannot_be_answered_with_another_reply(reply: ev.Event) -> None:
    client, server = opened()
    server.receive_data(client.send(ev.LoginRequested(user="alice", password="secret")))
    drain(server)
    with pytest.raises(LocalProtocolError):
        server.send(reply)
    client.receive_data(encode(reply))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


# -- HELLO_OK's login_required flag ---------------------------------------------------------


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("login_required", [False, True])
def test_hello_ok_flags_round_trip(read_only: bool, login_required: bool) -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(HELLO))
    drain(server)
    accept = ev.HelloAccepted(
        version=4, max_frame_bytes=1 << 20, read_only=read_only, login_required=login_required
    )
    data = server.send(accept)
    flags = data[-1]
    assert flags == int(read_only) | int(login_required) << 1
    client.receive_data(data)
    (received,) = drain(client)
    assert isinstance(received, ev.HelloAccepted)
    assert received.login_required is login_required
    assert received.read_only is read_only
    assert received == accept


def test_login_required_defaults_to_false() -> None:
    accept = ev.HelloAccepted(version=4, max_frame_bytes=1 << 20, read_only=True)
    assert accept.login_required is False
    decoded = decode_untrusted(FrameType.HELLO_OK, encode(accept)[5:])
    assert decoded == accept
