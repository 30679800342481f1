"""The UDP server endpoint's caps, without sockets: sessions, undecided requests and
the memory of answers stay bounded whatever arrives in one batch."""

from __future__ import annotations

import random

from ftransfer.proto.udp import packets as pk
from ftransfer.proto.udp.endpoint import (
    ACCEPT_MEMORY_S,
    RequestReceived,
    ServerEndpoint,
    make_cookie,
)
from ftransfer.proto.udp.session import SessionConfig

SECRET = b"k" * 32


def _endpoint(*, max_sessions: int, max_per_address: int, **more: int) -> ServerEndpoint:
    return ServerEndpoint(
        secret=SECRET,
        rng=random.Random(1),
        config=SessionConfig(chunk_bytes=1400, window=64, give_up_s=5),
        max_sessions=max_sessions,
        max_per_address=max_per_address,
        **more,
    )


def _ask(endpoint: ServerEndpoint, address: tuple[str, int], nonce: int, now: float = 0.0) -> None:
    """A validated STAT request (its answer is the application's business)."""
    initial = pk.Initial(
        nonce=nonce,
        operation=pk.Operation.STAT,
        chunk_bytes=1400,
        window=64,
        cookie=make_cookie(SECRET, address, nonce, now),
        size=0,
        mtime_ns=-1,
        path="f",
    )
    endpoint.receive_datagram(pk.encode(0, initial), address, now)


def _requests(endpoint: ServerEndpoint) -> list[RequestReceived]:
    out: list[RequestReceived] = []
    while (event := endpoint.next_event()) is not None:
        assert isinstance(event, RequestReceived)
        out.append(event)
    return out


def _codes(endpoint: ServerEndpoint, now: float = 0.0) -> dict[tuple[str, int], int]:
    """The code of every ACCEPT sent, by the address it went to."""
    codes: dict[tuple[str, int], int] = {}
    for datagram, to in endpoint.datagrams_to_send(now):
        _sid, body = pk.decode_untrusted(datagram)
        if isinstance(body, pk.Accept):
            codes[to] = body.code
    return codes


def _accept(endpoint: ServerEndpoint, request: RequestReceived) -> int:
    return endpoint.accept(
        request, size=10, mtime_ns=-1, now=0.0, read_chunk=lambda offset, n: bytes(n)
    )


def test_caps_hold_for_one_batch_of_validated_initials() -> None:
    """Found by review: the cap counted established sessions only, so 20 validated
    INITIALs read in one batch (up to 512 are) all became sessions past a cap of 4."""
    endpoint = _endpoint(max_sessions=4, max_per_address=2)
    addresses = [(f"10.0.0.{host}", 1000 + port) for host in range(1, 6) for port in range(4)]
    for nonce, address in enumerate(addresses):
        _ask(endpoint, address, nonce)  # the whole batch before the application runs
    for request in _requests(endpoint):
        _accept(endpoint, request)
    codes = _codes(endpoint)
    accepted = [address for address in addresses if codes[address] == 0]
    assert endpoint.session_count == len(accepted) == 4
    assert max(sum(1 for a in accepted if a[0] == host) for host, _p in accepted) <= 2
    assert sorted(codes.values()) == [0] * 4 + [41] * 16


def test_an_undecided_request_holds_its_slot_until_it_is_answered() -> None:
    """A LIST or STAT answer is built off the loop: until accept, refuse or done, the
    request counts against the caps, and an answer frees its slot at once."""
    endpoint = _endpoint(max_sessions=2, max_per_address=2)
    _ask(endpoint, ("10.0.0.1", 1), 1)
    _ask(endpoint, ("10.0.0.2", 1), 2)
    first, second = _requests(endpoint)  # both being answered, neither yet
    _ask(endpoint, ("10.0.0.3", 1), 3)
    assert _requests(endpoint) == [] and _codes(endpoint) == {("10.0.0.3", 1): 41}
    endpoint.refuse(first, code=10, message="not found", now=0.0)
    endpoint.done(second, now=0.0)
    _ask(endpoint, ("10.0.0.3", 1), 4)
    _ask(endpoint, ("10.0.0.4", 1), 5)
    assert len(_requests(endpoint)) == 2  # both slots are free again


def test_a_repeated_initial_while_undecided_is_not_a_second_request() -> None:
    endpoint = _endpoint(max_sessions=4, max_per_address=4)
    for _repeat in range(3):
        _ask(endpoint, ("10.0.0.1", 1), 7)
    [request] = _requests(endpoint)
    _accept(endpoint, request)
    assert endpoint.session_count == 1
    assert list(_codes(endpoint).values()) == [0]


def test_the_memory_of_answers_is_bounded_per_host_and_in_all() -> None:
    """Every answered nonce was kept for 30 s: a validated host sending requests that
    are refused at once (not found) grew the table without bound."""
    endpoint = _endpoint(max_sessions=4, max_per_address=2, max_remembered=8)
    assert endpoint.max_remembered_per_host == 4
    for nonce in range(10):
        _ask(endpoint, ("10.0.0.1", 1), nonce)
        for request in _requests(endpoint):
            endpoint.refuse(request, code=10, message="not found", now=0.0)
        assert list(_codes(endpoint).values()) == [10 if nonce < 4 else 41]
    codes: list[int] = []
    for host in (2, 3):  # another host has its share until the whole is full
        for nonce in range(4):
            _ask(endpoint, (f"10.0.0.{host}", 1), nonce)
            for request in _requests(endpoint):
                endpoint.done(request, now=0.0)
            codes.extend(_codes(endpoint).values())
    assert codes == [0] * 4 + [41] * 4 and len(endpoint._accepts) == 8
    later = ACCEPT_MEMORY_S + 1  # remembered answers expire, and room comes back
    _ask(endpoint, ("10.0.0.1", 1), 99, now=later)
    assert len(_requests(endpoint)) == 1
