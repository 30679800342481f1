"""Errors from the real server (a subprocess) over TCP: how it ends a connection it
cannot go on with (one ERROR frame with the code and the reason, at a frame
boundary, then the close), and the codes of a few refusals that are easy to get
wrong (a directory moved into itself, a symlink as a move's target, drive letters).

The cases themselves are tested on the sans-IO core in test_tcp_session.py; here
each goes through the real socket, stream and session. Timeouts are configured
tiny and the test blocks on the socket read (its own 30 s timeout is only a safety
net): no sleeps. (The HELLO deadline's ERROR 42 is test_integration.py's
test_slow_hello_hits_its_deadline_and_is_told_so.)
"""

from __future__ import annotations

import os
import select
import ssl
from pathlib import Path

import pytest
from conftest import RawPeer, ServerProcess
from test_tcp_session import BAD_AFTER_HELLO

from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.frames import encode

HELLO = ev.HelloOffered(min_version=4, max_version=4)


def _replies_until_closed(peer: RawPeer) -> list[ev.Event | ev.ConnectionClosed]:
    """Every reply the server sends before it closes, parsed by a client core."""
    wire = peer.read_until_closed()
    peer.conn.receive_data(wire)
    events: list[ev.Event | ev.ConnectionClosed] = []
    while not isinstance(event := peer.conn.next_event(), ev.NeedData):
        events.append(event)
    peer.conn.receive_data(b"")
    last = peer.conn.next_event()  # the close came at a frame boundary
    assert not isinstance(last, ev.NeedData)
    events.append(last)
    return events


def test_each_bad_frame_after_hello_gets_error_1_and_its_reason_before_the_close(
    server: ServerProcess,
) -> None:
    for case, (bad, reason) in BAD_AFTER_HELLO.items():
        peer = RawPeer(server.port)
        peer.send(HELLO)
        peer.send_raw(bad)
        events = _replies_until_closed(peer)
        peer.close()
        assert isinstance(events[0], ev.HelloAccepted), case
        assert isinstance(events[1], ev.Failed) and events[1].code == 1, (case, events)
        assert events[1].message.startswith("protocol error: ") and reason in events[1].message
        assert events[2:] == [ev.ConnectionClosed()], case
    (server.root / "alive").write_bytes(b"still serving")
    peer = RawPeer(server.port)
    peer.send(HELLO, ev.StatRequested(path="alive"))
    assert isinstance(peer.events()[0], ev.HelloAccepted)
    peer.close()


def test_an_empty_version_range_gets_error_2(server: ServerProcess) -> None:
    peer = RawPeer(server.port)
    peer.send_raw(encode(ev.HelloOffered(min_version=2, max_version=1)))
    events = _replies_until_closed(peer)
    peer.close()
    assert len(events) == 2 and isinstance(events[0], ev.Failed), events
    assert events[0].code == 2 and "no protocol version" in events[0].message
    assert "2..1 is empty" in events[0].message and events[1] == ev.ConnectionClosed()


@pytest.mark.parametrize("stalled", ["between requests", "inside an upload"])
def test_an_idle_connection_is_told_error_42_before_the_close(
    served: Path, tmp_path: Path, stalled: str
) -> None:
    srv = ServerProcess(served, "--idle-timeout", "0.3", log=tmp_path / "log")
    try:
        peer = RawPeer(srv.port)
        peer.send(HELLO)
        if stalled == "inside an upload":
            put = ev.PutRequested(path="never", size=10, mtime_ns=-1, mode=0o644, exclusive=False)
            peer.send(put)
            peer.send_raw(peer.conn.start_data(3) + b"abc")  # then nothing more
        events = _replies_until_closed(peer)  # blocks until the server gives up
        peer.close()
    finally:
        assert srv.stop() == 0
    assert isinstance(events[0], ev.HelloAccepted)
    assert isinstance(events[1], ev.Failed) and events[1].code == 42, events
    assert "timed out: no progress for 0.3 s" in events[1].message
    assert events[2:] == [ev.ConnectionClosed()]
    assert list(served.iterdir()) == []  # the upload was discarded with its temporary


def test_a_client_that_stops_reading_a_download_is_cut_off_by_the_idle_timeout(
    served: Path, tmp_path: Path
) -> None:
    """A GET whose reader never reads: the server is held in a sendfile by TCP flow
    control. It must abort the connection (mid-frame: no ERROR is possible) once the
    idle timeout passes, and free the session: with one connection allowed per
    address, the next connection is served. Observed as the connection's end (HUP
    or ERR on a socket nobody reads); the poll's 30 s is only a safety net."""
    with open(served / "big", "wb") as file:
        file.truncate(256 << 20)  # sparse: far more than any socket buffers hold
    srv = ServerProcess(
        served, "--idle-timeout", "0.5", "--max-per-address", "1", log=tmp_path / "log"
    )
    try:
        peer = RawPeer(srv.port, receive_buffer=4096)
        peer.send(HELLO, ev.GetRequested(path="big"))
        poller = select.poll()
        poller.register(peer.sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        assert poller.poll(30_000), "the server kept a connection that moved nothing"
        # aborted, not a clean end: a reset, or (TLS) the end without close_notify
        with pytest.raises((ConnectionResetError, ssl.SSLEOFError)):
            peer.read_until_closed()
        peer.close()
        again = RawPeer(srv.port)
        again.send(HELLO, ev.StatRequested(path="big"))
        events = list(again.events())
        while len(events) < 2:
            events += again.events()
        again.close()
        assert isinstance(events[1], ev.Stated), events  # not ERROR 41: the slot is free
    finally:
        assert srv.stop() == 0


def test_a_stat_of_a_long_name_gets_its_reason_in_at_most_1024_bytes(server: ServerProcess) -> None:
    peer = RawPeer(server.port)
    peer.send(HELLO, ev.StatRequested(path="€" * 1365))  # 4,095 bytes, one component
    events = list(peer.events())
    while len(events) < 2:
        events += peer.events()
    peer.close()
    refusal = events[1]
    assert isinstance(refusal, ev.Failed) and refusal.code == 13
    assert len(refusal.message.encode()) <= 1024 and "\ufffd" not in refusal.message
    assert refusal.message.startswith("€€€") and "..." in refusal.message
    assert refusal.message.endswith(": component longer than 255 bytes")


def _answers(port: int, *requests: ev.Event) -> list[ev.Event]:
    """The replies to ``requests`` (no uploads), one per request, in order."""
    peer = RawPeer(port)
    peer.send(HELLO, *requests)
    replies: list[ev.Event] = []
    while len(replies) < len(requests) + 1:
        replies += [e for e in peer.events() if not isinstance(e, ev.ConnectionClosed)]
    peer.close()
    assert isinstance(replies[0], ev.HelloAccepted)
    return replies[1:]


def test_refusals_of_moves_and_drive_letters_carry_their_own_codes(server: ServerProcess) -> None:
    (server.root / "d" / "e").mkdir(parents=True)
    (server.root / "f").write_bytes(b"file")
    (server.root / "to_dir").symlink_to("d")
    replies = _answers(
        server.port,
        ev.MoveRequested(source="d", target="d/e"),
        ev.MoveRequested(source="d", target="d"),
        ev.MoveRequested(source="f", target="to_dir"),
        ev.MoveRequested(source="d/e", target="to_dir"),
        ev.StatRequested(path="x/C:y"),
        ev.StatRequested(path="1:x"),
        ev.StatRequested(path="10:30.log"),  # a colon after the second character is a name
    )
    codes = [r.code if isinstance(r, ev.Failed) else 0 for r in replies]
    assert codes == [19, 19, 16, 16, 13, 13, 10], replies
    assert "into itself" in str(replies[0]) and "symlinks are not replaced" in str(replies[2])
    assert (server.root / "to_dir").is_symlink() and (server.root / "d" / "e").is_dir()


def test_a_file_that_shrinks_during_a_get_ends_in_error_and_the_connection_goes_on(
    server: ServerProcess,
) -> None:
    """The client reads nothing until FILE has come, so the server is held back by
    TCP flow control with most of 64 MiB unsent; then the file loses its content."""
    path = server.root / "shrinks"
    with open(path, "wb") as file:
        file.truncate(64 << 20)  # sparse: the size is what matters
    peer = RawPeer(server.port)
    peer.send(HELLO, ev.GetRequested(path="shrinks"))
    events = list(peer.events())
    while not any(isinstance(e, ev.FileStarted) for e in events):
        events += peer.events()
    os.truncate(path, 1000)
    while not isinstance(events[-1], ev.Failed | ev.FileEnded | ev.ConnectionClosed):
        events += [e for e in peer.events() if not isinstance(e, ev.FileData)]
    refusal = events[-1]
    assert isinstance(refusal, ev.Failed) and refusal.code == 40, refusal  # in place of END
    assert "changed size" in refusal.message
    peer.send(ev.StatRequested(path="shrinks"))  # the stream is still in step
    [stated] = peer.events()
    assert isinstance(stated, ev.Stated) and stated.entry.size == 1000
    peer.close()
