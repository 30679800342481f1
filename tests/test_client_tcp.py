"""The TCP client: what it sends before closing, how long it waits for HELLO_OK,
when it reuses a connection and when it opens a new one; a put of more files
than the descriptor limit, each outcome reported as its reply arrives; mv into
the root.

Fake servers here are the real server core (``Connection(Role.SERVER)``) on a
listening socket in a thread; what they saw is checked after the client is done.
Nothing waits with a sleep: a test waits for what it needs to see (a log line, a
readable socket) with a generous deadline as the safety net.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import resource
import select
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLI, ServerProcess, run_cli

from ftransfer.checksum import digest_bytes
from ftransfer.client import AsyncClient, Client
from ftransfer.client.drive import drive
from ftransfer.client.local import LocalFile
from ftransfer.client.result import Progress, TransferResult
from ftransfer.client.tcp import ENDING_CODES, Effect, Op, Poll, Read, Sendfile, TcpLogic, Write
from ftransfer.config import MAX_FRAME_BYTES, ClientConfig
from ftransfer.errors import ExitCode, FtransferError, NotFound
from ftransfer.io.tcp_sockets import TlsChannel
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role

PAYLOAD = b"the file the fake server serves"
HELLO_OK = ev.HelloAccepted(version=4, max_frame_bytes=MAX_FRAME_BYTES, read_only=False)


def _events(conn: socket.socket, core: Connection) -> list[ev.Event | ev.ConnectionClosed]:
    """Read until at least one event (or the end of the stream) arrives."""
    out: list[ev.Event | ev.ConnectionClosed] = []
    while not out:
        core.receive_data(conn.recv(65536))
        while not isinstance(event := core.next_event(), ev.NeedData):
            out.append(event)
            if isinstance(event, ev.ConnectionClosed):
                return out
    return out


def _serve_one_get(listener: socket.socket, seen: list[ev.Event | ev.ConnectionClosed]) -> None:
    """Answer HELLO and one GET with PAYLOAD, then record every event until EOF."""
    conn, _addr = listener.accept()
    core = Connection(Role.SERVER)
    with conn:
        while not any(isinstance(e, ev.GetRequested) for e in seen):
            seen.extend(_events(conn, core))
        reply = core.send(HELLO_OK)
        reply += core.send(ev.FileStarted(size=len(PAYLOAD), mtime_ns=-1, mode=0o644))
        reply += core.send(ev.FileData(data=PAYLOAD))
        reply += core.send(ev.FileEnded(digest=digest_bytes(PAYLOAD)))
        conn.sendall(reply)
        while not isinstance(seen[-1], ev.ConnectionClosed):
            seen.extend(_events(conn, core))


def _with_fake_server(client_side: Callable[[int], None]) -> list[ev.Event | ev.ConnectionClosed]:
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[ev.Event | ev.ConnectionClosed] = []
    thread = threading.Thread(target=_serve_one_get, args=(listener, seen))
    thread.start()
    try:
        client_side(listener.getsockname()[1])
    finally:
        thread.join(timeout=30)
        listener.close()
    assert not thread.is_alive()
    return seen


# ---- the last VERIFIED ---------------------------------------------------------------

PLAINTEXT = ClientConfig(insecure=True)
"""For the hand-written server below, which speaks the protocol without TLS."""


def test_a_single_get_sends_its_verified_before_the_close(tmp_path: Path) -> None:
    def get(port: int) -> None:
        with Client(f"127.0.0.1:{port}", config=PLAINTEXT) as client:
            client.get("f", tmp_path / "f")

    seen = _with_fake_server(get)
    assert (tmp_path / "f").read_bytes() == PAYLOAD
    assert seen[-2:] == [ev.DownloadVerified(digest=digest_bytes(PAYLOAD)), ev.ConnectionClosed()]


def test_the_async_client_sends_the_last_verified_too(tmp_path: Path) -> None:
    async def main(port: int) -> None:
        async with AsyncClient(f"127.0.0.1:{port}", config=PLAINTEXT) as client:
            await client.get("f", tmp_path / "f")

    seen = _with_fake_server(lambda port: asyncio.run(main(port)))
    assert seen[-2:] == [ev.DownloadVerified(digest=digest_bytes(PAYLOAD)), ev.ConnectionClosed()]


# ---- the wait for HELLO_OK -------------------------------------------------------------


def test_silence_after_hello_is_waited_for_as_long_as_the_hello_timeout() -> None:
    """No sockets: the logic's first read (HELLO_OK with the first reply) asks for
    the whole HELLO timeout, not a fraction of a second a loaded server can miss."""
    logic = TcpLogic("127.0.0.1:9021", hello_timeout_s=10.0)
    op = logic.stat("f")
    effects = [next(op)]
    while isinstance(effects[-1], Write):
        effects.append(op.send(None))
    assert effects[-1] == Read(large=False, timeout=10.0)
    op.close()


# ---- reuse and reconnection ------------------------------------------------------------


def _answer(logic: TcpLogic, op: Op[object], *replies: ev.Event) -> None:
    """Run ``op`` without sockets: what it writes goes to a server core, and its
    first read is answered with HELLO_OK and ``replies``."""
    server = Connection(Role.SERVER)
    effect = next(op)
    while isinstance(effect, Write):
        server.receive_data(effect.data)
        while not isinstance(server.next_event(), ev.NeedData):
            pass  # HELLO, then the request
        effect = op.send(None)
    assert isinstance(effect, Read)
    data = b"".join(server.send(e) for e in (HELLO_OK, *replies))
    op.send(memoryview(data))


@pytest.mark.parametrize("code", sorted(ENDING_CODES))
def test_an_error_that_ends_the_connection_makes_it_unusable(code: int) -> None:
    logic = TcpLogic("127.0.0.1:9021", hello_timeout_s=10.0)
    with pytest.raises(FtransferError, match="closing") as raised:
        _answer(logic, logic.stat("f"), ev.Failed(code=code, message="closing"))
    assert raised.value.code == code
    assert logic.conn.pending_requests == 0  # in step: the ERROR answered the STAT
    assert not logic.usable


def test_an_error_that_refuses_a_request_keeps_the_connection() -> None:
    logic = TcpLogic("127.0.0.1:9021", hello_timeout_s=10.0)
    with pytest.raises(NotFound):
        _answer(logic, logic.stat("f"), ev.Failed(code=10, message="f: No such file"))
    assert logic.usable


def _wait_readable(sock: _socket.socket | TlsChannel) -> None:
    """Until the server's close reaches the client (a generous safety net)."""
    assert select.select([sock.fileno()], [], [], 30)[0], "the server's close never arrived"


def test_a_client_reconnects_after_the_server_closed_its_idle_connection(
    served: Path, tmp_path: Path
) -> None:
    (served / "f").write_bytes(b"x")
    srv = ServerProcess(served, "--idle-timeout", "0.3", log=tmp_path / "log", pipe_log=True)
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:
            assert client.stat("f").size == 1
            srv.wait_for_log("timed out, closing")
            assert client._tcp is not None
            _wait_readable(client._tcp[0].sock)  # ERROR 42, then the end of the stream
            assert client.stat("f").size == 1  # on a new connection, not the old ERROR
            assert client.list()[0].name == "f"
    finally:
        assert srv.stop() == 0


def test_an_async_client_reconnects_after_the_server_closed_its_idle_connection(
    served: Path, tmp_path: Path
) -> None:
    (served / "f").write_bytes(b"x")
    srv = ServerProcess(served, "--idle-timeout", "0.3", log=tmp_path / "log", pipe_log=True)

    async def main() -> None:
        async with AsyncClient(f"127.0.0.1:{srv.port}") as client:
            assert (await client.stat("f")).size == 1
            srv.wait_for_log("timed out, closing")
            assert client._tcp is not None
            _wait_readable(client._tcp[0].sock)
            assert (await client.stat("f")).size == 1

    try:
        asyncio.run(main())
    finally:
        assert srv.stop() == 0


# ---- many files under a low descriptor limit -------------------------------------------

FD_LIMIT = 64
"""RLIMIT_NOFILE for the CLI below: far fewer descriptors than files to send."""


def _low_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


@pytest.mark.parametrize("transport", [[], ["--udp"]], ids=["tcp", "udp"])
def test_put_of_more_files_than_the_descriptor_limit(
    served: Path, tmp_path: Path, transport: list[str]
) -> None:
    srv = ServerProcess(served, log=tmp_path / "log")
    local = tmp_path / "local"
    local.mkdir()
    names = [f"f{i:04d}" for i in range(3 * FD_LIMIT)]
    for name in names:
        (local / name).write_bytes(name.encode())
    try:
        result = subprocess.run(
            [*CLI, "put", *transport, *names, srv.remote()],
            cwd=local,
            capture_output=True,
            timeout=120,
            check=False,
            preexec_fn=_low_fd_limit,
        )
    finally:
        assert srv.stop() == 0
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert sorted(os.listdir(served)) == names
    assert (served / names[-1]).read_bytes() == names[-1].encode()


def test_a_file_that_cannot_be_opened_is_one_error_line_among_the_outcomes(
    served: Path, tmp_path: Path
) -> None:
    srv = ServerProcess(served, log=tmp_path / "log")
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "c").write_bytes(b"c")
    try:
        result = subprocess.run(
            [*CLI, "put", "a", "missing", "c", srv.remote()],
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        assert srv.stop() == 0
    assert result.returncode == ExitCode.NOT_FOUND, result.stderr
    assert result.stderr.decode().splitlines() == [
        "ftransfer: error: local missing: No such file or directory"
    ]
    assert sorted(os.listdir(served)) == ["a", "c"]


class _InstantServer:
    """The server's core on the other end of a perfect pipe, without sockets: it
    answers HELLO and commits each upload the moment its END is written."""

    def __init__(self) -> None:
        self.core = Connection(Role.SERVER)
        self.replies = bytearray()

    def perform(self, effect: Effect) -> object:
        if isinstance(effect, Write):
            self._receive(effect.data)
        elif isinstance(effect, Sendfile):
            body = os.pread(effect.fd, effect.count, effect.offset)
            self._receive(body)
            return len(body)
        elif isinstance(effect, Read | Poll):
            if not self.replies:
                assert isinstance(effect, Poll), "the client waits for a reply never owed"
                return None
            replies, self.replies = memoryview(bytes(self.replies)), bytearray()
            return replies
        return None

    def _receive(self, data: bytes) -> None:
        self.core.receive_data(data)
        while not isinstance(event := self.core.next_event(), ev.NeedData):
            if isinstance(event, ev.HelloOffered):
                self.replies += self.core.send(HELLO_OK)
            elif isinstance(event, ev.FileEnded):
                self.replies += self.core.send(ev.PutCommitted(digest=event.digest))
            elif isinstance(event, ev.FileAborted):
                self.replies += self.core.send(ev.Failed(code=43, message="upload aborted"))


class _Recorder(Progress):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def file_started(self, name: str, size: int | None) -> None:
        self.seen.append(f"start {name}")

    def file_outcome(self, outcome: TransferResult | FtransferError) -> None:
        assert isinstance(outcome, TransferResult)
        self.seen.append(f"done {outcome.path}")


def test_each_pipelined_put_is_reported_when_its_reply_arrives(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode() * 10)
    logic, server, progress = TcpLogic("s", hello_timeout_s=10.0), _InstantServer(), _Recorder()
    items = [(str(tmp_path / name), name) for name in names]
    outcomes = drive(logic.put_many(items, exclusive=False, progress=progress), server.perform)
    assert [o.path for o in outcomes if isinstance(o, TransferResult)] == names
    # a's PUT_OK is read while c's frames are written, and reported then, not at the end
    assert progress.seen.index("done a") < progress.seen.index("start c")
    expected = [f"{what} {name}" for what in ("start", "done") for name in names]
    assert sorted(progress.seen) == sorted(expected)


def test_a_local_file_that_fails_to_read_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error reading one file of a batch aborts that file (ABORT at a frame
    boundary) and keeps the others going, as a file that changed size does."""
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode() * 10)
    real_read = LocalFile.read

    def read(self: LocalFile, offset: int, n: int) -> bytes:
        if self.path.endswith("/b"):
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self, offset, n)

    monkeypatch.setattr(LocalFile, "read", read)
    logic, server = TcpLogic("s", hello_timeout_s=10.0), _InstantServer()
    items = [(str(tmp_path / name), name) for name in "abc"]
    a, b, c = drive(logic.put_many(items, exclusive=False, progress=None), server.perform)
    assert isinstance(a, TransferResult) and isinstance(c, TransferResult)
    assert isinstance(b, FtransferError) and b.code == 40 and "Input/output error" in str(b)


# ---- mv into the root ------------------------------------------------------------------


def test_mv_to_slash_moves_into_the_root(server: ServerProcess) -> None:
    (server.root / "dir").mkdir()
    (server.root / "dir" / "a").write_bytes(b"a")
    result = run_cli("mv", server.remote("dir/a"), "/")
    assert result.returncode == 0, result.stderr
    assert (server.root / "a").read_bytes() == b"a"
    assert list((server.root / "dir").iterdir()) == []
    assert run_cli("mv", server.remote("a"), "/").returncode == 0  # already there: no change
    assert (server.root / "a").read_bytes() == b"a"


def test_mv_to_slash_does_not_move_into_a_directory_of_the_same_name(
    server: ServerProcess,
) -> None:
    (server.root / "dir").mkdir()
    (server.root / "dir" / "a").write_bytes(b"a")
    (server.root / "a").mkdir()
    result = run_cli("mv", server.remote("dir/a"), "/")
    assert result.returncode == ExitCode.REFUSED, result.stderr
    assert b"a: is a directory, not replaced" in result.stderr
    assert (server.root / "dir" / "a").read_bytes() == b"a"
    assert list((server.root / "a").iterdir()) == []
