"""The UDP client call (client/udp.py) without sockets: what it keeps of an answer.

A LIST or STAT answer is kept in memory until its digest is checked, so the
client holds it to the server's own cap: an ACCEPT that announces more, or data
past what was announced, is a protocol error and the request is closed.
"""

from __future__ import annotations

import pytest

from ftransfer.client.local import MemorySink
from ftransfer.client.udp import MAX_ANSWER_BYTES, UdpCall
from ftransfer.client.urls import Url
from ftransfer.config import ClientConfig
from ftransfer.errors import RemoteProtocolError
from ftransfer.proto.events import Accepted, DataReceived
from ftransfer.proto.udp.handshake import HandshakeState
from ftransfer.proto.udp.packets import Operation
from ftransfer.server.udp import MAX_ANSWER_BYTES as SERVER_MAX_ANSWER_BYTES


def _list_call() -> UdpCall:
    url = Url(scheme="udp", host="127.0.0.1", port=9)
    return UdpCall(
        url, ClientConfig(), Operation.LIST, "", now=0.0, make_sink=lambda a: MemorySink()
    )


def test_the_cap_is_the_servers_own() -> None:
    assert MAX_ANSWER_BYTES == SERVER_MAX_ANSWER_BYTES == 64 * 1024 * 1024


def test_an_accept_announcing_more_than_the_cap_is_refused() -> None:
    call = _list_call()
    call.on_event(Accepted(size=MAX_ANSWER_BYTES + 1, chunk_bytes=1200, session=7))
    call.on_event(DataReceived(data=b"x" * 1000, session=7))
    assert call.over and isinstance(call.error, RemoteProtocolError)
    assert call.request.state is HandshakeState.DONE  # the request is closed
    assert isinstance(call.sink, MemorySink) and call.sink.data == b""
    with pytest.raises(RemoteProtocolError, match="announced"):
        call.answer()


def test_an_answer_of_exactly_the_cap_is_taken() -> None:
    call = _list_call()
    call.on_event(Accepted(size=MAX_ANSWER_BYTES, chunk_bytes=1200, session=7))
    call.on_event(DataReceived(data=b"x" * 1000, session=7))
    assert call.error is None and not call.over


def test_more_data_than_announced_is_refused_and_not_kept() -> None:
    call = _list_call()
    call.on_event(Accepted(size=10, chunk_bytes=1200, session=7))
    call.on_event(DataReceived(data=b"0123456789", session=7))
    call.on_event(DataReceived(data=b"!", session=7))
    assert isinstance(call.error, RemoteProtocolError) and "more than the 10" in str(call.error)
    assert isinstance(call.sink, MemorySink) and call.sink.data == b"0123456789"
    assert call.request.state is HandshakeState.DONE
