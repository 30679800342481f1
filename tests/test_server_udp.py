"""The server's UDP application, without sockets: its answers to the endpoint's events."""

from __future__ import annotations

import errno
import logging
import random
from collections.abc import Callable
from typing import Any

import pytest

from ftransfer.checksum import digest_bytes
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.frames import encode_entry
from ftransfer.proto.udp import packets as pk
from ftransfer.proto.udp.endpoint import ServerEndpoint, make_cookie
from ftransfer.proto.udp.session import SessionConfig
from ftransfer.server.operations import Operations, Policy
from ftransfer.server.udp import UdpApplication
from ftransfer.storage.memory import MemoryReadable, MemoryStore
from ftransfer.storage.names import Name

PEER = ("192.0.2.5", 4000)


def _setup(
    store: MemoryStore | None = None, max_sessions: int = 8
) -> tuple[
    ServerEndpoint, UdpApplication, list[tuple[Callable[[], object], Callable[[object], None]]]
]:
    if store is None:
        store = MemoryStore(clock_ns=lambda: 0)
        store.put_file("f", b"content")
    endpoint = ServerEndpoint(
        secret=b"k" * 32,
        rng=random.Random(3),
        config=SessionConfig(chunk_bytes=1400, window=64, give_up_s=5),
        max_sessions=max_sessions,
    )
    deferred: list[tuple[Callable[[], object], Callable[[object], None]]] = []
    app = UdpApplication(
        Operations(store, Policy(anonymous_write=True)),
        endpoint,
        now=lambda: 0.0,
        defer=lambda w, t: deferred.append((w, t)),
    )
    return endpoint, app, deferred


def _initial(
    operation: pk.Operation,
    *,
    nonce: int,
    path: str = "f",
    size: int = 0,
    peer: tuple[str, int] = PEER,
) -> bytes:
    """A validated INITIAL from ``peer``."""
    initial = pk.Initial(
        nonce=nonce,
        operation=operation,
        chunk_bytes=1400,
        window=64,
        cookie=make_cookie(b"k" * 32, peer, nonce, 0.0),
        size=size,
        mtime_ns=-1,
        path=path,
    )
    return pk.encode(0, initial)


def _stat_initial() -> bytes:
    return _initial(pk.Operation.STAT, nonce=7)


def test_a_repeated_stat_request_is_answered_once() -> None:
    """STAT hashes off the loop; a retried INITIAL meanwhile must not start a second
    hash or a second session, and the one ACCEPT goes out before any DATA."""
    endpoint, app, deferred = _setup()
    for _retry in range(2):
        endpoint.receive_datagram(_stat_initial(), PEER, 0.0)
        while (event := endpoint.next_event()) is not None:
            app.handle(event)
    assert len(deferred) == 1  # one hash, whatever the client repeats
    work, then = deferred.pop()
    then(work())
    sent = endpoint.datagrams_to_send(0.0)
    bodies = [pk.decode_untrusted(datagram)[1] for datagram, _to in sent]
    accepts = [b for b in bodies if isinstance(b, pk.Accept)]
    entry = ev.Entry(name="f", kind=ev.EntryKind.FILE, size=7, mtime_ns=0, mode=0o644)
    assert len(accepts) == 1 and accepts[0].code == 0
    assert accepts[0].size == len(encode_entry(entry)) + 16
    assert isinstance(bodies[0], pk.Accept)  # before any DATA of the session
    assert endpoint.session_count == 1


def test_a_failed_commit_reports_the_servers_digest_of_what_arrived() -> None:
    endpoint, app, _deferred = _setup()
    initial = pk.Initial(
        nonce=9,
        operation=pk.Operation.PUT,
        chunk_bytes=1400,
        window=64,
        cookie=make_cookie(b"k" * 32, PEER, 9, 0.0),
        size=3,
        mtime_ns=-1,
        path="up",
    )
    endpoint.receive_datagram(pk.encode(0, initial), PEER, 0.0)
    while (event := endpoint.next_event()) is not None:
        app.handle(event)
    accept_datagram = endpoint.datagrams_to_send(0.0)[0][0]
    session, accept = pk.decode_untrusted(accept_datagram)
    assert isinstance(accept, pk.Accept) and accept.code == 0
    endpoint.receive_datagram(pk.encode_data(session, 0, 0, b"abc"), PEER, 0.01)
    endpoint.receive_datagram(
        pk.encode(session, pk.Fin(size=3, digest=digest_bytes(b"abd"))), PEER, 0.02
    )
    while (event := endpoint.next_event()) is not None:
        app.handle(event)
    results = [
        body
        for datagram, _to in endpoint.datagrams_to_send(0.02)
        if isinstance(body := pk.decode_untrusted(datagram)[1], pk.Result)
    ]
    assert len(results) == 1 and results[0].code == 30
    assert results[0].digest == digest_bytes(b"abc")  # what the server got, not zeros


def _open(
    endpoint: ServerEndpoint, app: UdpApplication, operation: pk.Operation, size: int = 0
) -> tuple[int, list[pk.Body]]:
    """A validated request from PEER, handled; (its session id, what the server sent)."""
    path = "f" if operation is pk.Operation.GET else "up"
    endpoint.receive_datagram(_initial(operation, nonce=11, path=path, size=size), PEER, 0.0)
    return _step(endpoint, app, 0.0)


def _step(endpoint: ServerEndpoint, app: UdpApplication, now: float) -> tuple[int, list[pk.Body]]:
    while (event := endpoint.next_event()) is not None:
        app.handle(event)
    packets = [pk.decode_untrusted(d) for d, to in endpoint.datagrams_to_send(now) if to == PEER]
    accepts = [(sid, b) for sid, b in packets if isinstance(b, pk.Accept)]
    return (accepts[0][0] if accepts else 0), [body for _sid, body in packets]


def test_a_get_the_client_found_corrupt_ends_with_a_nonzero_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint, app, _deferred = _setup()
    with caplog.at_level(logging.INFO, logger="ftransfer.server"):
        session, sent = _open(endpoint, app, pk.Operation.GET)
        assert any(isinstance(b, pk.Data) for b in sent) and session
        ack = pk.Ack(cumulative=1, largest_tx=0, window=64, delay_us=0, ranges=())
        endpoint.receive_datagram(pk.encode(session, ack), PEER, 0.01)
        [fin] = [b for b in _step(endpoint, app, 0.01)[1] if isinstance(b, pk.Fin)]
        assert fin.digest == digest_bytes(b"content")
        mine = digest_bytes(b"c0ntent")
        result = pk.Result(code=30, digest=mine, message="xxh3-128 mismatch")
        endpoint.receive_datagram(pk.encode(session, result), PEER, 0.02)
        _sid, after = _step(endpoint, app, 0.02)
    [close] = [b for b in after if isinstance(b, pk.Close)]
    assert close.code == 30  # not 0: the transfer failed
    assert endpoint.session_count == 0
    assert "udp get f: failed: xxh3-128 mismatch" in caplog.text


@pytest.mark.parametrize("operation", [pk.Operation.PUT, pk.Operation.GET])
def test_a_client_abort_frees_the_session_at_once_and_commits_nothing(
    operation: pk.Operation, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, app, _deferred = _setup()
    with caplog.at_level(logging.INFO, logger="ftransfer.server"):
        session, _sent = _open(endpoint, app, operation, size=3000)
        assert endpoint.session_count == 1
        if operation is pk.Operation.PUT:
            endpoint.receive_datagram(pk.encode_data(session, 0, 0, bytes(1400)), PEER, 0.01)
            _step(endpoint, app, 0.01)
        abort = pk.Close(code=43, message="aborted by the client")
        endpoint.receive_datagram(pk.encode(session, abort), PEER, 0.02)
        _sid, after = _step(endpoint, app, 0.02)
    assert endpoint.session_count == 0  # right after, not at the give-up time
    assert endpoint.get_timer() is None and after == []  # nothing more is sent to it
    assert "failed: aborted by the client" in caplog.text
    assert app.endpoint.session(session) is None
    store = app.ops.store
    assert isinstance(store, MemoryStore) and set(store.files()) == {"f"}  # nothing committed


# ---- one unreadable file must not stall the other sessions --------------------------------


class _FlakyReadable(MemoryReadable):
    """A file whose reads fail with EIO (``short``: a file cut to half its size after
    it was opened)."""

    def __init__(self, node: Any, *, short: bool) -> None:
        super().__init__(node)
        self._short = short

    def read(self, offset: int, n: int) -> bytes:
        if self._short:
            return super().read(offset, n)[: max(0, self.size // 2 - offset)]
        raise OSError(errno.EIO, "Input/output error")


class _FlakyStore(MemoryStore):
    def open_read(self, name: Name) -> MemoryReadable:
        readable = super().open_read(name)
        if str(name) in ("eio", "shrunk"):
            return _FlakyReadable(self._lookup(name), short=str(name) == "shrunk")
        return readable


def _get_from(endpoint: ServerEndpoint, peer: tuple[str, int], path: str, nonce: int) -> None:
    endpoint.receive_datagram(
        _initial(pk.Operation.GET, nonce=nonce, path=path, peer=peer), peer, 0.0
    )


@pytest.mark.parametrize("bad", ["eio", "shrunk"])
def test_an_unreadable_file_ends_its_own_session_with_code_40_and_no_other(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review: one session's read error escaped datagrams_to_send, so every
    step failed and every other client stalled until its give-up; a file that shrank
    gave short chunks the client drops. Both now end that session alone: CLOSE 40."""
    store = _FlakyStore(clock_ns=lambda: 0)
    for name in ("good", "eio", "shrunk"):
        store.put_file(name, bytes(range(200)) * 56)  # 8 whole chunks
    endpoint, app, _deferred = _setup(store)
    good, victim = ("192.0.2.5", 4000), ("192.0.2.6", 4000)
    with caplog.at_level(logging.INFO, logger="ftransfer.server"):
        _get_from(endpoint, victim, bad, 1)
        _get_from(endpoint, good, "good", 2)
        while (event := endpoint.next_event()) is not None:
            app.handle(event)
        sent = endpoint.datagrams_to_send(0.0)
        while (event := endpoint.next_event()) is not None:
            app.handle(event)
    to_good = [pk.decode_untrusted(d)[1] for d, to in sent if to == good]
    to_victim = [pk.decode_untrusted(d)[1] for d, to in sent if to == victim]
    assert sum(isinstance(b, pk.Data) for b in to_good) > 1  # the other client is served
    assert not any(isinstance(b, pk.Data) and len(b.payload) < 1400 for b in to_victim)
    [close] = [b for b in to_victim if isinstance(b, pk.Close)]
    assert close.code == 40
    assert f"udp get {bad}: failed:" in caplog.text
    [session] = {sid for d, to in sent if to == good for sid, _b in [pk.decode_untrusted(d)]}
    ack = pk.Ack(cumulative=8, largest_tx=7, window=64, delay_us=0, ranges=())
    endpoint.receive_datagram(pk.encode(session, ack), good, 0.01)
    after = [pk.decode_untrusted(d)[1] for d, to in endpoint.datagrams_to_send(0.01)]
    assert any(isinstance(b, pk.Fin) for b in after)  # the other transfer goes on to FIN
    assert endpoint.session_count == 1  # the victim's session is over and forgotten


def test_listings_and_stats_being_built_are_bounded() -> None:
    """Found by review: every STAT (a file hash) and LIST (up to 64 MiB) was queued
    for the executor without bound; past MAX_DEFERRED_ANSWERS a request is told 41."""
    from ftransfer.server.udp import MAX_DEFERRED_ANSWERS

    endpoint, app, deferred = _setup(max_sessions=4 * MAX_DEFERRED_ANSWERS)
    peers = [(f"192.0.2.{n}", 4000) for n in range(1, MAX_DEFERRED_ANSWERS + 3)]
    for nonce, peer in enumerate(peers):
        endpoint.receive_datagram(_initial(pk.Operation.STAT, nonce=nonce, peer=peer), peer, 0.0)
    while (event := endpoint.next_event()) is not None:
        app.handle(event)
    answers = [(pk.decode_untrusted(d)[1], to) for d, to in endpoint.datagrams_to_send(0.0)]
    busy = [to for body, to in answers if isinstance(body, pk.Accept) and body.code == 41]
    assert len(deferred) == MAX_DEFERRED_ANSWERS and busy == peers[MAX_DEFERRED_ANSWERS:]
    work, then = deferred.pop(0)
    then(work())  # one answered: room for the next
    late = ("192.0.2.200", 4000)
    endpoint.receive_datagram(_initial(pk.Operation.STAT, nonce=1, peer=late), late, 0.0)
    while (event := endpoint.next_event()) is not None:
        app.handle(event)
    assert len(deferred) == MAX_DEFERRED_ANSWERS
