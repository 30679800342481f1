"""The server's UDP application, without sockets: its answers to the endpoint's events."""

from __future__ import annotations

import random
from collections.abc import Callable

from ftransfer.checksum import digest_bytes
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.frames import encode_entry
from ftransfer.proto.udp import packets as pk
from ftransfer.proto.udp.endpoint import ServerEndpoint, make_cookie
from ftransfer.proto.udp.session import SessionConfig
from ftransfer.server.operations import Operations, Policy
from ftransfer.server.udp import UdpApplication
from ftransfer.storage.memory import MemoryStore

PEER = ("192.0.2.5", 4000)


def _setup() -> tuple[
    ServerEndpoint, UdpApplication, list[tuple[Callable[[], object], Callable[[object], None]]]
]:
    store = MemoryStore(clock_ns=lambda: 0)
    store.put_file("f", b"content")
    endpoint = ServerEndpoint(
        secret=b"k" * 32,
        rng=random.Random(3),
        config=SessionConfig(chunk_bytes=1400, window=64, give_up_s=5),
        max_sessions=8,
    )
    deferred: list[tuple[Callable[[], object], Callable[[object], None]]] = []
    app = UdpApplication(
        Operations(store, Policy()),
        endpoint,
        now=lambda: 0.0,
        defer=lambda w, t: deferred.append((w, t)),
    )
    return endpoint, app, deferred


def _stat_initial() -> bytes:
    initial = pk.Initial(
        nonce=7,
        operation=pk.Operation.STAT,
        chunk_bytes=1400,
        window=64,
        cookie=make_cookie(b"k" * 32, PEER, 7, 0.0),
        size=0,
        mtime_ns=-1,
        path="f",
    )
    return pk.encode(0, initial)


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
