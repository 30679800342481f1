"""The client API: put, get, ls, stat, rm, mkdir, mv over one TCP connection.

Theory of operation
-------------------
``Client.connect`` opens the connection and sends HELLO without waiting for the
answer: the first request follows in the same round trip. ``put_files`` pipelines:
a sender task streams PUT, DATA and END for every file back to back, while the
caller's task reads the replies in order, so N small files cost one round trip,
not N. If the server refuses an upload while its bytes are still going out, the
sender stops between frames and sends ABORT.

The client trusts the server no more than the server trusts it: downloads are
written only to the path the user named (through ``storage.open_local_writer``:
temporary file, xxh3-128 verified, renamed into place), the core refuses more bytes
than the server announced, and every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from .checksum import new_hasher
from .config import DEFAULT_PORT, HASH_SCRATCH_BYTES, PROTOCOL_VERSION, ClientConfig
from .errors import (
    ConnectionFailed,
    FtransferError,
    IntegrityError,
    IsADirectory,
    NotFound,
    NotRegularFile,
    RemoteProtocolError,
    TransferTimeout,
    UnsupportedVersion,
    error_from_code,
)
from .io.stream import FrameStream, SinkFailed
from .proto.tcp import events as ev
from .proto.tcp.connection import Connection, Role
from .storage import open_local_writer, os_error, write_all

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Remote:
    """A parsed ``HOST[:PORT][/PATH]``."""

    host: str
    port: int
    path: str


def parse_remote(
    text: str, *, allow_port_zero: bool = False, default_port: int = DEFAULT_PORT
) -> Remote:
    """Parse ``HOST[:PORT][/PATH]`` or ``[V6ADDR][:PORT][/PATH]``; ValueError if malformed.

    Port 0 ("pick a free one") is only meaningful for addresses we listen on.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unterminated '[' in IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
    else:
        cut = min((i for i in (text.find(":"), text.find("/")) if i >= 0), default=len(text))
        host, rest = text[:cut], text[cut:]
    if not host:
        raise ValueError(f"{text!r}: no host")
    port = default_port
    if rest.startswith(":"):
        digits, slash, tail = rest[1:].partition("/")
        rest = slash + tail
        if digits:
            lowest = 0 if allow_port_zero else 1
            if not digits.isdigit() or not lowest <= int(digits) < 65536:
                raise ValueError(f"{text!r}: port must be a number from {lowest} to 65535")
            port = int(digits)
    if rest and not rest.startswith("/"):
        raise ValueError(f"{text!r}: expected '/' before the path")
    return Remote(host=host, port=port, path=rest[1:])


class Progress(Protocol):
    """Receives transfer progress (the CLI draws it with tqdm)."""

    def file_started(self, name: str, size: int | None) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def file_done(self) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class TransferResult:
    """One completed, verified transfer."""

    remote: str
    local: str
    size: int
    seconds: float
    digest: bytes


@dataclass
class _PutBatch:
    exclusive: bool
    progress: Progress | None
    queue: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    outcomes: dict[int, TransferResult | FtransferError] = field(default_factory=dict)
    digests: dict[int, bytes] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    refused: int = -1


def open_local_file(path: Path) -> tuple[int, os.stat_result]:
    """Open a local regular file for sending."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise os_error(exc, str(path)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        cls = IsADirectory if stat.S_ISDIR(st.st_mode) else NotRegularFile
        raise cls(f"{path}: not a regular file")
    return fd, st


class Sink(Protocol):
    """Where received file bytes go: written and hashed as they arrive, and only
    accepted by ``commit`` if the sender's xxh3-128 matches (AtomicWriter too)."""

    @property
    def digest(self) -> bytes: ...

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self, expected: bytes) -> bytes: ...

    def abort(self) -> None: ...


class _HashingSink:
    """The digest and the check that StdoutSink and MemorySink share."""

    what = "data received"

    def __init__(self) -> None:
        self._hasher = new_hasher()

    @property
    def digest(self) -> bytes:
        return self._hasher.digest()

    def commit(self, expected: bytes) -> bytes:
        if self.digest != expected:
            raise IntegrityError(f"xxh3-128 mismatch: the {self.what} is corrupt")
        return self.digest

    def abort(self) -> None:
        """Nothing to undo: the bytes were not going to a file of ours."""


class StdoutSink(_HashingSink):
    """Download target ``-``: bytes go to a descriptor as they arrive (not atomic)."""

    what = "output written"

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def write(self, data: bytes | memoryview) -> None:
        try:
            write_all(self._fd, data)
        except OSError as exc:
            raise os_error(exc, "standard output") from None
        self._hasher.update(data)


class MemorySink(_HashingSink):
    """A small answer (a listing, a STAT) kept in memory until verified."""

    what = "answer received"

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self.data += data
        self._hasher.update(data)


class Client:
    """A connection to an ftransfer server."""

    def __init__(self, stream: FrameStream, config: ClientConfig) -> None:
        self.stream, self.config = stream, config
        self._hello_done = False

    @classmethod
    async def connect(cls, host: str, port: int, config: ClientConfig | None = None) -> Client:
        """Connect and send HELLO (its answer is read with the first reply)."""
        config = config or ClientConfig()
        loop = asyncio.get_running_loop()
        scratch = bytearray(HASH_SCRATCH_BYTES)
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                _transport, stream = await loop.create_connection(
                    lambda: FrameStream(Connection(Role.CLIENT), scratch, config.idle_timeout_s),
                    host,
                    port,
                )
        except TimeoutError:
            raise TransferTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConnectionFailed(f"cannot connect to {host}:{port}: {reason}") from None
        stream.send(ev.HelloOffered(min_version=PROTOCOL_VERSION, max_version=PROTOCOL_VERSION))
        return cls(stream, config)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Flush what is queued and close."""
        self.stream.close()
        try:
            async with asyncio.timeout(self.config.idle_timeout_s):
                await self.stream.wait_closed()
        except TimeoutError:
            self.stream.abort()

    # ---- replies ----------------------------------------------------------------------

    async def _next(self) -> ev.Event:
        if not self._hello_done:
            await self._hello()
        return await self._raw_next()

    async def _raw_next(self) -> ev.Event:
        event = await self.stream.next_event()  # the stream's watchdog bounds the wait
        if isinstance(event, ev.ConnectionClosed):
            raise ConnectionFailed("the server closed the connection")
        return event

    async def _hello(self) -> None:
        event = await self._raw_next()
        if isinstance(event, ev.Failed):
            raise error_from_code(event.code, event.message)
        assert isinstance(event, ev.HelloAccepted)  # the core allows nothing else here
        if event.version != PROTOCOL_VERSION:
            raise UnsupportedVersion(f"server chose unsupported version {event.version}")
        self._hello_done = True

    async def _expect(self, kind: type[E]) -> E:
        event = await self._next()
        if isinstance(event, ev.Failed):
            raise error_from_code(event.code, event.message)
        if not isinstance(event, kind):
            raise RemoteProtocolError(f"expected {kind.__name__}, got {type(event).__name__}")
        return event

    async def _request(self, request: ev.Event, kind: type[E]) -> E:
        self.stream.send(request)
        return await self._expect(kind)

    # ---- simple requests -----------------------------------------------------------------

    async def stat(self, path: str) -> tuple[ev.Entry, bytes]:
        """Kind, size, mtime and (for files) the xxh3-128 the server computed."""
        reply = await self._request(ev.StatRequested(path=path), ev.Stated)
        return reply.entry, reply.digest

    async def list_dir(self, path: str) -> list[ev.Entry]:
        """The entries of a remote directory ("" is the root), sorted by name."""
        self.stream.send(ev.ListRequested(path=path))
        entries: list[ev.Entry] = []
        while True:
            event = await self._next()
            if isinstance(event, ev.Failed):
                raise error_from_code(event.code, event.message)
            if isinstance(event, ev.ListEnded):
                return sorted(entries, key=lambda e: e.name)
            assert isinstance(event, ev.Listed)
            entries.extend(event.entries)

    async def remove(self, path: str) -> None:
        await self._request(ev.RemoveRequested(path=path), ev.Done)

    async def mkdir(self, path: str, *, parents: bool = False) -> None:
        await self._request(ev.MkdirRequested(path=path, parents=parents), ev.Done)

    async def move(self, source: str, target: str) -> None:
        await self._request(ev.MoveRequested(source=source, target=target), ev.Done)

    # ---- downloads ---------------------------------------------------------------------

    async def get_file(
        self, remote: str, target: Path | int, progress: Progress | None = None
    ) -> TransferResult:
        """Download ``remote`` to ``target`` (a path, written atomically, or a descriptor)."""
        started = time.perf_counter()
        header = await self._request(ev.GetRequested(path=remote), ev.FileStarted)
        sink: Sink
        if isinstance(target, int):
            sink = StdoutSink(target)
        else:
            sink = open_local_writer(target, size=header.size, mtime_ns=header.mtime_ns)
        if progress is not None:
            progress.file_started(remote, header.size)
        try:
            digest = await self._receive_file(sink, progress)
        finally:
            sink.abort()
            if progress is not None:
                progress.file_done()
        local = "-" if isinstance(target, int) else str(target)
        seconds = time.perf_counter() - started
        return TransferResult(
            remote=remote, local=local, size=header.size, seconds=seconds, digest=digest
        )

    async def _receive_file(self, sink: Sink, progress: Progress | None) -> bytes:
        def consume(data: bytes | memoryview) -> None:
            sink.write(data)
            if progress is not None:
                progress.advance(len(data))

        self.stream.set_data_sink(consume)
        try:
            event = await self._next()
        except SinkFailed as exc:
            raise exc.cause from None
        finally:
            self.stream.set_data_sink(None)
        if isinstance(event, ev.Failed):
            raise error_from_code(event.code, event.message)
        assert isinstance(event, ev.FileEnded)  # the core allows nothing else mid-file
        self.stream.send(ev.DownloadVerified(digest=sink.digest))
        return sink.commit(event.digest)

    # ---- uploads -----------------------------------------------------------------------

    async def put_files(
        self,
        items: Sequence[tuple[Path, str]],
        *,
        exclusive: bool = False,
        progress: Progress | None = None,
    ) -> list[TransferResult | FtransferError]:
        """Upload many (local, remote) pairs, pipelined; one outcome per pair, in order."""
        batch = _PutBatch(exclusive=exclusive, progress=progress)
        sender = asyncio.create_task(self._send_puts(items, batch))
        try:
            await self._collect_puts(items, batch)
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]
        return [batch.outcomes[i] for i in range(len(items))]

    async def _send_puts(self, items: Sequence[tuple[Path, str]], batch: _PutBatch) -> None:
        try:
            for index, (local, remote) in enumerate(items):
                try:
                    fd, st = open_local_file(local)
                except FtransferError as exc:
                    batch.outcomes[index] = exc
                    continue
                try:
                    await self._send_one(index, fd, st, remote, batch)
                finally:
                    os.close(fd)
        finally:
            batch.queue.put_nowait(None)

    async def _send_one(
        self, index: int, fd: int, st: os.stat_result, remote: str, batch: _PutBatch
    ) -> None:
        request = ev.PutRequested(
            path=remote, size=st.st_size, mtime_ns=st.st_mtime_ns, exclusive=batch.exclusive
        )
        self.stream.send(request)
        batch.started[index], batch.sizes[index] = time.perf_counter(), st.st_size
        batch.queue.put_nowait(index)
        progress = batch.progress
        if progress is not None:
            progress.file_started(remote, st.st_size)
        try:
            digest = await self.stream.send_file(
                fd,
                st.st_size,
                progress.advance if progress is not None else None,
                cancelled=lambda: batch.refused == index,
            )
        finally:
            if progress is not None:
                progress.file_done()
        if digest is None:
            self.stream.send(ev.FileAborted())
        else:
            batch.digests[index] = digest
            self.stream.send(ev.FileEnded(digest=digest))
        await self.stream.drain()

    async def _collect_puts(self, items: Sequence[tuple[Path, str]], batch: _PutBatch) -> None:
        while (index := await batch.queue.get()) is not None:
            event = await self._next()
            local, remote = items[index]
            if isinstance(event, ev.Failed):
                batch.refused = index
                batch.outcomes[index] = error_from_code(event.code, event.message)
                continue
            assert isinstance(event, ev.PutCommitted)
            if event.digest != batch.digests.get(index):
                batch.outcomes[index] = IntegrityError(f"{remote}: server digest differs")
                continue
            batch.outcomes[index] = TransferResult(
                remote=remote,
                local=str(local),
                size=batch.sizes[index],
                seconds=time.perf_counter() - batch.started[index],
                digest=event.digest,
            )


def _join(directory: str, name: str) -> str:
    directory = directory.rstrip("/")
    return f"{directory}/{name}" if directory else name


StatFunction = Callable[[str], Awaitable[tuple[ev.Entry, bytes]]]
"""``Client.stat``, or its UDP counterpart."""


async def put_targets(
    stat: StatFunction, sources: Sequence[Path], remote_path: str
) -> list[tuple[Path, str]]:
    """Where each local file goes: into ``remote_path`` if it is (or must be) a directory.

    Several sources, an empty path or a trailing ``/`` name a directory; a single
    source to an existing remote directory keeps its name too (one STAT round trip).
    """
    into_dir = len(sources) > 1 or not remote_path or remote_path.endswith("/")
    if not into_dir:
        try:
            entry, _digest = await stat(remote_path)
            into_dir = entry.kind is ev.EntryKind.DIRECTORY
        except NotFound:
            pass  # the name will be created
    if into_dir:
        return [(source, _join(remote_path, source.name)) for source in sources]
    return [(sources[0], remote_path)]


def get_target(remote_path: str, local: str | None) -> Path | None:
    """The local path a download goes to; None means standard output (``-``)."""
    if local == "-":
        return None
    name = remote_path.rstrip("/").rsplit("/", 1)[-1]
    if local is None:
        return Path(name)
    target = Path(local)
    if local.endswith("/") or target.is_dir():
        return target / name
    return target
