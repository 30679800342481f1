"""The ftransfer server: listeners, sessions, limits, storage policy, logging.

Theory of operation
-------------------
``Server`` binds the listening socket(s), enforces the connection caps (global and
per address; over the cap a connection gets ERROR 41 "busy" at once and is closed)
and runs one ``Session`` task per connection. A session reads one request at a time
from its ``FrameStream`` and answers it before reading the next, so replies leave in
request order and a client that pipelines thousands of requests costs the server one
request's worth of state. Every wait on the peer has a deadline: an absolute one for
the HELLO (slow-header defence) and the idle timeout after that.

Uploads stream through ``storage.AtomicWriter`` (write + hash as bytes arrive, then
verify, fsync, rename). A refusal is sent as soon as the PUT header is read; the
core then discards the rest of that upload. Downloads use sendfile. Every failure a
peer can cause ends in an ERROR reply or a closed connection, never in a stopped
server; cancellation (shutdown) aborts in-progress uploads, removing their temp files.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .checksum import ZERO_DIGEST, file_digest
from .config import HASH_SCRATCH_BYTES, LIST_BATCH_BYTES, MAX_FRAME_BYTES, ServerConfig
from .errors import (
    Aborted,
    Busy,
    ConnectionFailed,
    FtransferError,
    InternalError,
    ProtocolError,
    TransferTimeout,
    UnsupportedVersion,
)
from .io.datagram import open_udp_socket
from .io.stream import FrameStream, SinkFailed
from .proto.tcp import events as ev
from .proto.tcp.connection import Connection, Role, negotiate_version
from .storage import AtomicWriter, Storage, escape
from .tftp_service import TftpService
from .udp_service import UdpService

logger = logging.getLogger("ftransfer.server")


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket; ``::`` is dual-stack (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConnectionFailed(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise ConnectionFailed(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def format_url(scheme: str, address: tuple[Any, ...]) -> str:
    """``tcp://HOST:PORT`` with IPv6 hosts in brackets."""
    host, port = address[0], address[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class Server:
    """A running ftransfer server over one root directory."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.storage = Storage(
            config.root,
            read_only=config.read_only,
            max_file_bytes=config.max_file_bytes,
            fsync=config.fsync,
        )
        self._scratch = bytearray(HASH_SCRATCH_BYTES)
        self._listeners: list[asyncio.Server] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._per_address: collections.Counter[str] = collections.Counter()
        self.address: tuple[Any, ...] = ()
        self.udp: UdpService | None = None
        self.tftp: TftpService | None = None

    @property
    def urls(self) -> list[str]:
        urls = [format_url("tcp", self.address)]
        if self.udp is not None:
            urls.append(format_url("udp", self.udp.address))
        if self.tftp is not None:
            urls.append(format_url("tftp", self.tftp.address))
        return urls

    async def start(self) -> None:
        """Remove stale temporary files, bind and start accepting."""
        swept = self.storage.sweep_temporaries()
        if swept:
            logger.info("removed %d temporary files left by an earlier run", swept)
        sock = bind_tcp(self.config.host, self.config.port)
        self.address = sock.getsockname()
        loop = asyncio.get_running_loop()
        self._listeners.append(await loop.create_server(self._new_stream, sock=sock))
        if self.config.udp:
            port = self.config.udp_port
            udp_sock = open_udp_socket(
                self.config.host, self.address[1] if port is None else port, connect=False
            )
            self.udp = UdpService(self.storage, self.config, udp_sock)
        if self.config.tftp_port is not None:
            tftp_sock = open_udp_socket(self.config.host, self.config.tftp_port, connect=False)
            self.tftp = TftpService(self.storage, self.config, tftp_sock)

    def _new_stream(self) -> FrameStream:
        stream = FrameStream(Connection(Role.SERVER), self._scratch, self.config.idle_timeout_s)
        task = asyncio.get_running_loop().create_task(self._run(stream))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)
        return stream

    async def _run(self, stream: FrameStream) -> None:
        await stream.wait_connected()
        address = stream.peer[0]
        if (
            len(self._sessions) > self.config.max_connections
            or self._per_address[address] >= self.config.max_connections_per_address
        ):
            logger.warning("refused %s: too many connections", address)
            stream.send(ev.Failed(code=Busy.code, message="too many connections, try later"))
            stream.close()
            return
        self._per_address[address] += 1
        try:
            await Session(self, stream).run()
        finally:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    async def close(self) -> None:
        """Stop listening, cancel sessions (aborting uploads), release the root."""
        for listener in self._listeners:
            listener.close()
        if self.udp is not None:
            self.udp.close()
        if self.tftp is not None:
            self.tftp.close()
            await asyncio.to_thread(self.tftp.join)  # transfer threads abort and end
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self.storage.close()


class Session:
    """One client connection: reads requests, answers each in order."""

    def __init__(self, server: Server, stream: FrameStream) -> None:
        self.server, self.stream = server, stream
        self.storage = server.storage
        self.peer = f"{stream.peer[0]}:{stream.peer[1]}"
        self._sent_digests: collections.deque[bytes] = collections.deque(maxlen=4096)
        loop = asyncio.get_running_loop()
        self._hello_deadline = loop.time() + server.config.hello_timeout_s
        handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
            ev.PutRequested: self._put,
            ev.GetRequested: self._get,
            ev.ListRequested: self._list,
            ev.StatRequested: self._stat,
            ev.RemoveRequested: self._remove,
            ev.MkdirRequested: self._mkdir,
            ev.MoveRequested: self._move,
            ev.DownloadVerified: self._verified,
        }
        self._handlers = handlers

    async def run(self) -> None:
        try:
            if await self._hello():
                await self._serve_requests()
        except (TimeoutError, TransferTimeout):
            logger.info("%s: timed out, closing", self.peer)
        except ProtocolError as exc:
            logger.warning("%s: protocol error: %s", self.peer, exc)
            self._try_fail(exc)
        except ConnectionFailed as exc:
            logger.info("%s: %s", self.peer, exc)
        except Exception as exc:
            logger.exception("%s: internal error, closing the connection", self.peer)
            self._try_fail(InternalError(f"internal server error: {type(exc).__name__}"))
        finally:
            self.stream.close()

    async def _next(self) -> ev.Event | ev.ConnectionClosed:
        return await self.stream.next_event()  # the stream's watchdog bounds the wait

    async def _hello(self) -> bool:
        async with asyncio.timeout_at(self._hello_deadline):
            event = await self.stream.next_event()
        if not isinstance(event, ev.HelloOffered):
            return False  # a clean close before HELLO; anything else raised already
        version = negotiate_version(event)
        if version is None:
            self._fail(UnsupportedVersion("this server speaks protocol version 1 only"))
            return False
        self.stream.send(
            ev.HelloAccepted(
                version=version,
                max_frame_bytes=MAX_FRAME_BYTES,
                read_only=self.server.config.read_only,
            )
        )
        logger.debug("%s: connected, version %d", self.peer, version)
        return True

    async def _serve_requests(self) -> None:
        while True:
            event = await self._next()
            if isinstance(event, ev.ConnectionClosed):
                return
            await self._handlers[type(event)](event)
            await self.stream.drain()

    def _fail(self, error: FtransferError) -> None:
        self.stream.send(ev.Failed(code=error.code, message=str(error)))

    def _try_fail(self, error: FtransferError) -> None:
        # The reply stream may be mid-file or closed: then closing says enough.
        with contextlib.suppress(FtransferError):
            self._fail(error)

    # ---- requests -------------------------------------------------------------------

    async def _put(self, request: ev.PutRequested) -> None:
        try:
            writer = self.storage.begin_write(
                request.path,
                size=request.size,
                mtime_ns=request.mtime_ns,
                exclusive=request.exclusive,
            )
        except FtransferError as exc:
            logger.info("%s: put %s refused: %s", self.peer, escape(request.path), exc)
            self._fail(exc)
            return
        logger.debug("%s: receiving %s (%d bytes)", self.peer, escape(request.path), request.size)
        with writer:
            self.stream.set_data_sink(writer.write)
            try:
                event = await self._next()
            except SinkFailed as exc:
                self._fail(exc.cause)
                return
            finally:
                self.stream.set_data_sink(None)
            if isinstance(event, ev.FileAborted):
                self._fail(Aborted("upload aborted by the client; nothing was written"))
                return
            assert isinstance(event, ev.FileEnded)  # the core allows nothing else mid-file
            self._commit(writer, request, event.digest)

    def _commit(self, writer: AtomicWriter, request: ev.PutRequested, digest: bytes) -> None:
        try:
            written = writer.commit(digest)
        except FtransferError as exc:
            logger.warning("%s: put %s failed: %s", self.peer, escape(request.path), exc)
            self._fail(exc)
            return
        self.stream.send(ev.PutCommitted(digest=written))
        logger.info("%s: put %s (%d bytes)", self.peer, escape(request.path), request.size)

    async def _get(self, request: ev.GetRequested) -> None:
        try:
            handle = self.storage.open_read(request.path)
        except FtransferError as exc:
            self._fail(exc)
            return
        try:
            self.stream.send(ev.FileStarted(size=handle.size, mtime_ns=handle.mtime_ns))
            digest = await self.stream.send_file(handle.fd, handle.size)
            assert digest is not None
            self.stream.send(ev.FileEnded(digest=digest))
            self._sent_digests.append(digest)
        finally:
            handle.close()
        logger.info("%s: get %s (%d bytes)", self.peer, escape(request.path), handle.size)

    async def _verified(self, report: ev.DownloadVerified) -> None:
        sent = self._sent_digests.popleft() if self._sent_digests else None
        if sent is not None and sent != report.digest:
            logger.warning("%s: client computed a different digest for a download", self.peer)

    async def _list(self, request: ev.ListRequested) -> None:
        batch: list[ev.Entry] = []
        size = 0
        try:
            for entry in self.storage.list_dir(request.path):
                batch.append(entry)
                size += 32 + len(entry.name)
                if size >= LIST_BATCH_BYTES:
                    self.stream.send(ev.Listed(entries=tuple(batch)))
                    batch, size = [], 0
                    await self.stream.drain()
        except FtransferError as exc:
            self._fail(exc)
            return
        if batch:
            self.stream.send(ev.Listed(entries=tuple(batch)))
        self.stream.send(ev.ListEnded())

    async def _stat(self, request: ev.StatRequested) -> None:
        try:
            entry, handle = self.storage.stat(request.path)
        except FtransferError as exc:
            self._fail(exc)
            return
        digest = ZERO_DIGEST
        if handle is not None:
            try:
                digest = await asyncio.to_thread(file_digest, handle.fd)
            finally:
                handle.close()
        self.stream.send(ev.Stated(entry=entry, digest=digest))

    async def _simple(self, action: Callable[[], None], what: str) -> None:
        try:
            action()
        except FtransferError as exc:
            self._fail(exc)
            return
        self.stream.send(ev.Done())
        logger.info("%s: %s", self.peer, what)

    async def _remove(self, request: ev.RemoveRequested) -> None:
        await self._simple(lambda: self.storage.remove(request.path), f"rm {escape(request.path)}")

    async def _mkdir(self, request: ev.MkdirRequested) -> None:
        await self._simple(
            lambda: self.storage.mkdir(request.path, parents=request.parents),
            f"mkdir {escape(request.path)}",
        )

    async def _move(self, request: ev.MoveRequested) -> None:
        await self._simple(
            lambda: self.storage.move(request.source, request.target),
            f"mv {escape(request.source)} {escape(request.target)}",
        )
