"""The TLS data paths: the blocking client's ``TlsChannel`` (records through memory
BIOs, many per system call), ``copy_range`` (a file range read once, hashed and
written), and the server's larger asyncio TLS reads while a file streams in."""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ftransfer.checksum import digest_bytes, new_hasher
from ftransfer.config import CORK_BYTES
from ftransfer.errors import ConnectionFailed, StorageIOError
from ftransfer.io import tls
from ftransfer.io.files import FileUnreadable
from ftransfer.io.stream import coalesced
from ftransfer.io.tcp_sockets import (
    TLS_READ_BYTES,
    BlockingSocket,
    TlsChannel,
    start_tls_blocking,
)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key, _created = tls.ensure_identity(str(tmp_path_factory.mktemp("id") / "state"))
    return cert, key


def _raw_pair() -> tuple[_socket.socket, socket.socket]:
    """A connected TCP pair on loopback: the client's end as ``_socket`` (what the
    client uses)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        client.connect(listener.getsockname())
        peer, _address = listener.accept()
    peer.settimeout(10)
    return client, peer


@pytest.fixture
def tls_pair(
    identity: tuple[str, str],
) -> Iterator[Callable[[Callable[[ssl.SSLSocket], None]], TlsChannel]]:
    """``start(serve)``: a TlsChannel whose peer, an SSLSocket in a thread, runs
    ``serve`` (and then closes without close_notify)."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    context = tls.server_context(*identity)

    def start(serve: Callable[[ssl.SSLSocket], None]) -> TlsChannel:
        raw, peer = _raw_pair()

        def run() -> None:
            try:
                with context.wrap_socket(peer, server_side=True) as wrapped:
                    serve(wrapped)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        channel, certificate = start_tls_blocking(
            raw, "localhost", 1, tls.client_context(None), server_hostname=None, timeout_s=10
        )
        assert tls.fingerprint(certificate) == tls.fingerprint_of_file(identity[0])
        return channel

    yield start
    for thread in threads:
        thread.join(10)
    assert not errors


def _read_all(channel: TlsChannel, size: int) -> tuple[bytes, list[int]]:
    buf = memoryview(bytearray(size + 1))
    got, counts = 0, []
    while n := channel.recv_into(buf[got:]):
        counts.append(n)
        got += n
    return bytes(buf[:got]), counts


def test_a_channel_takes_many_records_per_read(tls_pair: Callable[..., TlsChannel]) -> None:
    payload = os.urandom(64 * 1024 + 5)  # five records: all fit in the socket's buffers
    sent = threading.Event()

    def serve(peer: ssl.SSLSocket) -> None:
        peer.sendall(payload)
        sent.set()

    channel = tls_pair(serve)
    channel.settimeout(10)
    assert sent.wait(10)
    buf = memoryview(bytearray(1 << 20))
    assert channel.recv_into(buf) == len(payload)  # one call, not one per record
    assert bytes(buf[: len(payload)]) == payload
    assert channel.recv_into(buf) == 0  # the end (no close_notify): 0, not an error
    channel.close()


def test_a_channel_ends_at_close_notify(tls_pair: Callable[..., TlsChannel]) -> None:
    def serve(peer: ssl.SSLSocket) -> None:
        peer.sendall(b"last words")
        with contextlib.suppress(ssl.SSLEOFError):
            peer.unwrap()  # close_notify (then it waits for ours, which never comes)

    channel = tls_pair(serve)
    channel.settimeout(10)
    got, _counts = _read_all(channel, 100)
    assert got == b"last words"
    assert channel.recv_into(memoryview(bytearray(8))) == 0  # and stays at the end
    channel.close()


def test_a_channel_reads_a_large_stream_whole(tls_pair: Callable[..., TlsChannel]) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    channel = tls_pair(lambda peer: peer.sendall(payload))
    channel.settimeout(10)
    got, _counts = _read_all(channel, len(payload))
    channel.close()
    assert got == payload


def test_a_channel_sends_what_it_is_given(tls_pair: Callable[..., TlsChannel]) -> None:
    payload = os.urandom(2 * 1024 * 1024 + 5)
    received: list[bytes] = []

    def serve(peer: ssl.SSLSocket) -> None:
        chunks, got = [], 0
        while got < len(payload) and (chunk := peer.recv(1 << 20)):
            chunks.append(chunk)
            got += len(chunk)
        received.append(b"".join(chunks))
        peer.sendall(b"k")

    channel = tls_pair(serve)
    channel.settimeout(10)
    channel.sendall(memoryview(payload))
    one = memoryview(bytearray(8))
    assert bytes(one[: channel.recv_into(one)]) == b"k"
    assert channel.cipher().startswith("TLS_")
    channel.close()
    assert received == [payload]


def test_pending_counts_what_was_received_and_not_taken(
    tls_pair: Callable[..., TlsChannel],
) -> None:
    done = threading.Event()

    def serve(peer: ssl.SSLSocket) -> None:
        peer.sendall(b"a" * 100)
        done.wait(10)

    channel = tls_pair(serve)
    channel.settimeout(10)
    five = memoryview(bytearray(5))
    assert channel.recv_into(five) == 5
    assert channel.pending() == 95
    rest = memoryview(bytearray(200))
    assert channel.recv_into(rest) == 95
    assert channel.pending() == 0
    done.set()
    channel.close()


def test_a_handshake_with_no_tls_peer_is_a_connection_error() -> None:
    raw, peer = _raw_pair()
    peer.close()  # gone before the ClientHello is answered
    with pytest.raises(ConnectionFailed, match="TLS handshake"):
        start_tls_blocking(
            raw, "localhost", 1, tls.client_context(None), server_hostname=None, timeout_s=10
        )


# -- copy_range ------------------------------------------------------------------------


def _plain_sockets() -> tuple[BlockingSocket, socket.socket]:
    raw, peer = _raw_pair()
    return BlockingSocket(raw, 10), peer


def _drain(peer: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size and (chunk := peer.recv(1 << 20)):
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def test_copy_range_sends_and_hashes_a_range(tmp_path: Path) -> None:
    data = os.urandom(TLS_READ_BYTES * 2 + 333)
    path = tmp_path / "f"
    path.write_bytes(data)
    sock, peer = _plain_sockets()
    received: list[bytes] = []
    offset, count = 100, len(data) - 200
    reader = threading.Thread(target=lambda: received.append(_drain(peer, count + 3)))
    reader.start()
    hasher = new_hasher()
    with open(path, "rb") as file:
        sock.write(b"hdr")  # queued frames go first
        assert sock.copy_range(file.fileno(), offset, count, hasher) == count
    sock.close()
    reader.join(10)
    peer.close()
    assert received == [b"hdr" + data[offset : offset + count]]
    assert hasher.digest() == digest_bytes(data[offset : offset + count])


def test_copy_range_completes_the_frame_of_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    sock, peer = _plain_sockets()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_drain(peer, 5000)))
    reader.start()
    with open(path, "rb") as file:
        assert sock.copy_range(file.fileno(), 0, 5000, None) == 1000
    sock.close()
    reader.join(10)
    peer.close()
    assert received == [b"x" * 1000 + bytes(4000)]


def test_copy_range_of_an_unreadable_file_completes_the_frame_then_raises(
    tmp_path: Path,
) -> None:
    sock, peer = _plain_sockets()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_drain(peer, 4096)))
    reader.start()
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: every read fails (EISDIR)
    try:
        with pytest.raises(FileUnreadable) as raised:
            sock.copy_range(fd, 0, 4096, new_hasher())
    finally:
        os.close(fd)
    sock.close()
    reader.join(10)
    peer.close()
    assert isinstance(raised.value, StorageIOError) and raised.value.code == 40
    assert received == [bytes(4096)]  # the frame is whole: zeros


# -- the server: coalesced writes, larger TLS reads while a file streams in --------------


def test_coalesced_joins_small_frames_and_keeps_large_ones() -> None:
    big = b"B" * CORK_BYTES
    assert coalesced([b"a", b"b", big, b"c", big, big]) == [b"ab", big, b"c", big, big]
    assert coalesced([b"a"]) == [b"a"]
    assert coalesced([big]) == [big]


def test_set_read_bytes_knows_only_asyncio_tls_transports() -> None:
    assert tls.set_read_bytes(object(), 1 << 20) is False


def test_set_read_bytes_grows_and_shrinks_one_connection(identity: tuple[str, str]) -> None:
    tls.limit_asyncio_tls_buffer()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[asyncio.BaseTransport] = []
        made = asyncio.Event()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                seen.append(transport)
                made.set()

        server = await loop.create_server(Server, "127.0.0.1", 0, ssl=tls.server_context(*identity))
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client_context(None)
        )
        await asyncio.wait_for(made.wait(), 10)
        transport = seen[0]
        protocol = getattr(transport, "_ssl_protocol")  # noqa: B009 (what it changes)
        assert protocol.max_size == tls.ASYNCIO_TLS_READ_BYTES  # the class's
        assert tls.set_read_bytes(transport, tls.ASYNCIO_TLS_FILE_READ_BYTES)
        assert protocol.get_buffer(-1).nbytes == tls.ASYNCIO_TLS_FILE_READ_BYTES
        assert tls.set_read_bytes(transport, tls.ASYNCIO_TLS_READ_BYTES)
        assert len(protocol._ssl_buffer) == tls.ASYNCIO_TLS_READ_BYTES  # memory back
        assert protocol.get_buffer(-1).nbytes == tls.ASYNCIO_TLS_READ_BYTES
        assert type(protocol).max_size == tls.ASYNCIO_TLS_READ_BYTES  # others unchanged
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
