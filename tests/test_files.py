"""Sending a file as DATA frames (io/files.py): a file that shrinks, or fails to
read, while it is sent ends in ERROR in place of END, after a complete frame,
never in a torn one."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from ftransfer.checksum import digest_bytes
from ftransfer.config import MAX_FRAME_BYTES, SMALL_FILE_BYTES
from ftransfer.errors import StorageIOError
from ftransfer.io.files import (
    CopyFrame,
    FileChanged,
    FileOp,
    FileUnreadable,
    SendfileFrame,
    WriteFrame,
    file_frames,
)
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role

HELLO = ev.HelloOffered(min_version=4, max_version=4)
ACCEPT = ev.HelloAccepted(version=4, max_frame_bytes=MAX_FRAME_BYTES, read_only=False)


class Source:
    """A file as the server's Download shows it: announced ``size``, but reads give
    only what ``data`` holds now; a descriptor when ``fd`` is given."""

    def __init__(self, data: bytes, size: int, fd: int | None = None) -> None:
        self.data, self.size, self.fd = data, size, fd
        self.digest: bytes | None = None

    def fileno(self) -> int | None:
        return self.fd

    def read(self, offset: int, n: int) -> bytes:
        return self.data[offset : offset + n]


def _downloading(size: int) -> tuple[Connection, Connection, bytes]:
    """A server core that has sent FILE(size), the client core that asked, the wire."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(HELLO) + client.send(ev.GetRequested(path="f")))
    while not isinstance(server.next_event(), ev.NeedData):
        pass
    wire = server.send(ACCEPT) + server.send(ev.FileStarted(size=size, mtime_ns=0, mode=0o644))
    return client, server, wire


def _run(
    conn: Connection, frames: Generator[FileOp, int | None, bytes | None], fd_bytes: bytes
) -> tuple[bytes, bytes | FileUnreadable | None]:
    """Carry out the generator's requests as a stream would; (the wire, its result)."""
    wire, answer = b"", None
    try:
        while True:
            op = frames.send(answer)
            if isinstance(op, WriteFrame):
                wire, answer = wire + op.data + op.body, None
            else:
                assert isinstance(op, SendfileFrame)
                got = fd_bytes[op.offset : op.offset + op.count]
                wire += (
                    conn.start_data(op.count) + got + bytes(op.count - len(got))
                )  # the stream completes the frame
                answer = len(got)
    except StopIteration as stop:
        return wire, stop.value
    except FileUnreadable as exc:
        return wire, exc


def _replies(client: Connection, wire: bytes) -> list[ev.Event]:
    client.receive_data(wire)
    out: list[ev.Event] = []
    while not isinstance(event := client.next_event(), ev.NeedData | ev.ConnectionClosed):
        out.append(ev.FileData(data=bytes(event.data)) if isinstance(event, ev.FileData) else event)
    return out


@pytest.mark.parametrize("size", [10, SMALL_FILE_BYTES + 10, 2 * MAX_FRAME_BYTES + 10])
def test_a_file_that_shrank_ends_in_error_after_a_whole_frame(tmp_path: Path, size: int) -> None:
    announced = os.urandom(size)
    now = announced[: size // 2]  # the file lost its second half after it was opened
    path = tmp_path / "f"
    path.write_bytes(now)
    client, server, wire = _downloading(size)
    with open(path, "rb") as file:
        source = Source(now, size, fd=file.fileno())
        body, result = _run(server, file_frames(server, source, bytearray(65536)), now)
    assert isinstance(result, FileChanged) and result.code == 40
    assert "changed size" in str(result)
    wire += body + server.send(ev.Failed(code=result.code, message=str(result)))  # not END
    events = _replies(client, wire)
    assert isinstance(events[1], ev.FileStarted)
    data = b"".join(bytes(e.data) for e in events if isinstance(e, ev.FileData))
    frame_end = min(size, (len(now) // MAX_FRAME_BYTES + 1) * MAX_FRAME_BYTES)
    assert len(data) == frame_end  # the short frame completed, no frame after it
    assert data == now + bytes(frame_end - len(now))  # completed with zeros
    assert events[-1] == ev.Failed(code=40, message=str(result))
    assert client.pending_requests == 0  # the GET is answered: the connection goes on


def test_a_stream_that_copies_is_asked_to_read_and_hash_each_frame(tmp_path: Path) -> None:
    whole = os.urandom(MAX_FRAME_BYTES + 1000)
    path = tmp_path / "f"
    path.write_bytes(whole)
    _client, server, _wire = _downloading(len(whole))
    ops: list[CopyFrame] = []
    with open(path, "rb") as file:
        source = Source(whole, len(whole), fd=file.fileno())
        frames = file_frames(server, source, bytearray(9), sendfile=False, copy=True)
        answer = None
        try:
            while True:
                op = frames.send(answer)
                assert isinstance(op, CopyFrame)  # no sendfile, no read here
                assert op.hasher is not None
                ops.append(op)
                server.start_data(op.count)  # (what the stream does, with the header)
                op.hasher.update(whole[op.offset : op.offset + op.count])
                answer = op.count
        except StopIteration as stop:
            digest = stop.value
    assert [(op.offset, op.count) for op in ops] == [(0, MAX_FRAME_BYTES), (MAX_FRAME_BYTES, 1000)]
    assert digest == digest_bytes(whole)  # the stream's hashing is the digest: one read


def test_a_file_without_a_descriptor_is_read_and_hashed_and_padded_if_short() -> None:
    client, server, wire = _downloading(3 * 1024 * 1024)
    whole = os.urandom(3 * 1024 * 1024)
    body, digest = _run(server, file_frames(server, Source(whole, len(whole)), bytearray(9)), b"")
    assert digest == digest_bytes(whole)
    assert [e for e in _replies(client, wire + body)][-1] == ev.FileData(data=whole[2 << 20 :])
    client, server, wire = _downloading(3 * 1024 * 1024)
    body, result = _run(
        server, file_frames(server, Source(whole[:100], len(whole)), bytearray(9)), b""
    )
    assert isinstance(result, FileChanged)
    events = _replies(client, wire + body)
    assert events[-1] == ev.FileData(data=whole[:100] + bytes((1 << 20) - 100))  # one whole frame


class FailingSource(Source):
    """Reads fail from ``fail_at`` on, as a store's read raises (an EIO mapped)."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data, len(data))
        self.fail_at = fail_at

    def read(self, offset: int, n: int) -> bytes:
        if offset >= self.fail_at:
            raise StorageIOError("file: Input/output error")
        return super().read(offset, n)


def test_a_read_error_ends_in_error_40_at_a_frame_boundary() -> None:
    whole = os.urandom(3 << 20)
    client, server, wire = _downloading(len(whole))
    frames = file_frames(server, FailingSource(whole, fail_at=1 << 20), bytearray(9))
    body, result = _run(server, frames, b"")
    assert isinstance(result, FileUnreadable) and result.code == 40
    assert str(result).endswith("while it was being sent: file: Input/output error")
    events = _replies(client, wire + body + server.send(ev.Failed(code=40, message="x")))
    assert [e.data for e in events if isinstance(e, ev.FileData)] == [whole[: 1 << 20]]
    assert events[-1] == ev.Failed(code=40, message="x") and client.pending_requests == 0


def test_an_os_error_while_hashing_what_sendfile_sent_ends_in_error_40(tmp_path: Path) -> None:
    """The frame went out whole by sendfile; hashing it reads the descriptor, which
    fails (a directory's here: EISDIR, as a disk's EIO would)."""
    size = SMALL_FILE_BYTES + 10
    client, server, wire = _downloading(size)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        frames = file_frames(server, Source(b"", size, fd=fd), bytearray(65536))
        body, result = _run(server, frames, bytes(size))
    finally:
        os.close(fd)
    assert isinstance(result, FileUnreadable) and not isinstance(result, FileChanged)
    assert result.code == 40 and "Is a directory" in str(result)
    events = _replies(client, wire + body + server.send(ev.Failed(code=40, message="x")))
    assert sum(len(e.data) for e in events if isinstance(e, ev.FileData)) == size  # whole
    assert client.pending_requests == 0
