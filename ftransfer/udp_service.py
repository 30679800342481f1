"""The server's UDP side: one socket, the sans-IO endpoint, the same storage policy.

Theory of operation
-------------------
``UdpService`` owns a ``ServerEndpoint`` (handshake, cookies, sessions) and a
``DatagramPump`` (socket and timer). After every batch of datagrams and every timer
it runs ``_process``: new validated requests are decided here, with exactly the
storage calls and refusals of the TCP server (path safety, read-only, size and
space limits, atomic commit); session events move data between sessions and
storage; then every datagram the core produced is sent and the one timer re-armed.

PUT streams into an ``AtomicWriter`` and commits only when the FIN's digest matches
what arrived; GET reads with pread from a descriptor opened at ACCEPT time (a
replacement during the download is not seen); LIST and STAT answers are small byte
strings in the TCP mode's entry encoding, built in a worker thread (a STAT hashes
the whole file) and sent like a file; REMOVE's result rides in the ACCEPT.
Finished and timed-out sessions are forgotten and their files closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from dataclasses import dataclass

from .checksum import ZERO_DIGEST, file_digest
from .config import ServerConfig
from .errors import FtransferError, InternalError
from .io.datagram import DatagramPump
from .proto.tcp.frames import encode_entry
from .proto.udp.handshake import Address, RequestReceived, ServerEndpoint
from .proto.udp.packets import MAX_CHUNK_BYTES, Operation
from .proto.udp.session import (
    DataArrived,
    FinArrived,
    Finished,
    ReadChunk,
    Session,
    SessionConfig,
    State,
    TimedOut,
)
from .storage import AtomicWriter, BlockReader, Storage, escape

logger = logging.getLogger("ftransfer.server")

SERVER_WINDOW_CHUNKS = 8192
"""Reorder window offered to clients, before the per-session byte bound (endpoint.py)."""
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""A LIST answer larger than this is refused rather than built in memory."""


@dataclass
class _Job:
    """What a session reads from or writes to."""

    what: str
    peer: Address
    writer: AtomicWriter | None = None
    fd: int | None = None
    size: int = 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _bytes_reader(data: bytes) -> ReadChunk:
    return lambda offset, size: data[offset : offset + size]


class UdpService:
    """Serves the UDP protocol on one socket."""

    def __init__(self, storage: Storage, config: ServerConfig, sock: socket.socket) -> None:
        self.storage, self.config = storage, config
        session_config = SessionConfig(
            chunk_bytes=MAX_CHUNK_BYTES,
            window=SERVER_WINDOW_CHUNKS,
            give_up_s=config.udp_give_up_s,
        )
        self.endpoint = ServerEndpoint(
            secret=secrets.token_bytes(32),
            rng=random.SystemRandom(),
            config=session_config,
            max_sessions=config.max_connections,
            max_per_address=config.max_connections_per_address,
        )
        self._jobs: dict[int, _Job] = {}
        self._answering: set[tuple[Address, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.pump = DatagramPump(sock, self._on_datagram, self._process, self._on_timer)
        self.address = sock.getsockname()

    def _on_datagram(self, datagram: memoryview, address: Address) -> None:
        self.endpoint.receive(datagram, address, self.pump.now())

    def _on_timer(self) -> None:
        self.endpoint.handle_timer(self.pump.now())
        self._process()

    def _process(self) -> None:
        now = self.pump.now()
        while self.endpoint.requests:
            self._decide(self.endpoint.requests.pop(0), now)
        # The endpoint's datagrams (ACCEPT, RETRY, PONG) first: a new session's DATA
        # sent ahead of its ACCEPT would be dropped by a client that has no session yet.
        for datagram, address in self.endpoint.outbox:
            self.pump.send(datagram, address)
        self.endpoint.outbox.clear()
        for session_id, (address, session) in list(self.endpoint.sessions.items()):
            self._run_events(session_id, session, now)
            self.pump.send_many(session.datagrams(now), address)
            if session.state is State.DONE:
                self._forget(session_id)
        self.pump.arm(self.endpoint.get_timer())

    # ---- requests ---------------------------------------------------------------------

    def _decide(self, request: RequestReceived, now: float) -> None:
        initial = request.initial
        what = f"udp {initial.operation.name.lower()} {escape(initial.path)}"
        if initial.operation in (Operation.LIST, Operation.STAT):
            self._answer_later(request, what)
            return
        try:
            self._start(request, what, now)
        except (FtransferError, OSError) as exc:
            self._refuse(request, what, exc, now)

    def _refuse(
        self, request: RequestReceived, what: str, exc: FtransferError | OSError, now: float
    ) -> None:
        if isinstance(exc, FtransferError):
            logger.info("%s:%d: %s refused: %s", *request.address, what, exc)
            self.endpoint.refuse(request, code=exc.code, message=str(exc), now=now)
        else:
            logger.warning("%s:%d: %s failed: %s", *request.address, what, exc)
            self.endpoint.refuse(request, code=InternalError.code, message="I/O error", now=now)

    def _answer_later(self, request: RequestReceived, what: str) -> None:
        """LIST and STAT read a whole directory or hash a whole file: in a worker
        thread, so a 100 GiB STAT does not stall every other client. A repeated
        INITIAL while the work runs is ignored (the ACCEPT will answer both)."""
        key = (request.address, request.initial.nonce)
        if key in self._answering:
            return
        self._answering.add(key)
        task = asyncio.get_running_loop().create_task(self._answer_task(request, what, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_task(
        self, request: RequestReceived, what: str, key: tuple[Address, int]
    ) -> None:
        initial = request.initial
        try:
            answer = await asyncio.to_thread(self._answer, initial.operation, initial.path)
        except (FtransferError, OSError) as exc:
            self._refuse(request, what, exc, self.pump.now())
        else:
            session = self.endpoint.accept(
                request,
                size=len(answer),
                mtime_ns=-1,
                now=self.pump.now(),
                read_chunk=_bytes_reader(answer),
            )
            self._jobs[session.session_id] = _Job(what=what, peer=request.address, size=len(answer))
        finally:
            self._answering.discard(key)
        self._process()

    def _start(self, request: RequestReceived, what: str, now: float) -> None:
        initial, operation = request.initial, request.initial.operation
        job = _Job(what=what, peer=request.address)
        if operation is Operation.PUT:
            job.writer = self.storage.begin_write(
                initial.path, size=initial.size, mtime_ns=initial.mtime_ns, exclusive=False
            )
            job.size = initial.size
            session = self.endpoint.accept(request, size=0, mtime_ns=-1, now=now, read_chunk=None)
        elif operation is Operation.GET:
            handle = self.storage.open_read(initial.path)
            job.fd, job.size = handle.fd, handle.size
            session = self.endpoint.accept(
                request,
                size=handle.size,
                mtime_ns=handle.mtime_ns,
                now=now,
                read_chunk=BlockReader(handle.fd),
            )
        else:
            self.storage.remove(initial.path)
            self.endpoint.refuse(request, code=0, message="removed", now=now)
            logger.info("%s:%d: %s", *request.address, what)
            return
        self._jobs[session.session_id] = job

    def _answer(self, operation: Operation, path: str) -> bytes:
        if operation is Operation.STAT:
            entry, handle = self.storage.stat(path)
            digest = ZERO_DIGEST
            if handle is not None:
                try:
                    digest = file_digest(handle.fd)
                finally:
                    handle.close()
            return encode_entry(entry) + digest
        parts: list[bytes] = []
        total = 0
        for entry in self.storage.list_dir(path):
            parts.append(encode_entry(entry))
            total += len(parts[-1])
            if total > MAX_ANSWER_BYTES:
                raise InternalError("directory listing too large for UDP; use TCP")
        return b"".join(parts)

    # ---- sessions ------------------------------------------------------------------------

    def _run_events(self, session_id: int, session: Session, now: float) -> None:
        job = self._jobs.get(session_id)
        for event in session.events:
            if job is None:
                break
            if isinstance(event, DataArrived) and job.writer is not None:
                self._write(session, job, event)
            elif isinstance(event, FinArrived) and job.writer is not None:
                self._commit(session, job, event, now)
            elif isinstance(event, Finished | TimedOut):
                self._log_end(job, event)
        session.events.clear()

    def _write(self, session: Session, job: _Job, event: DataArrived) -> None:
        assert job.writer is not None
        try:
            job.writer.write(memoryview(event.data))  # one write per batch of datagrams
        except FtransferError as exc:
            session.fail(code=exc.code, message=str(exc))

    def _commit(self, session: Session, job: _Job, event: FinArrived, now: float) -> None:
        assert job.writer is not None
        try:
            digest = job.writer.commit(event.digest)
        except FtransferError as exc:
            session.finish(code=exc.code, message=str(exc), digest=ZERO_DIGEST, now=now)
            return
        session.finish(code=0, message="", digest=digest, now=now)

    def _log_end(self, job: _Job, event: Finished | TimedOut) -> None:
        peer = f"{job.peer[0]}:{job.peer[1]}"
        if isinstance(event, TimedOut):
            logger.info("%s: %s timed out", peer, job.what)
        elif event.code:
            logger.info("%s: %s failed: %s", peer, job.what, event.message)
        else:
            logger.info("%s: %s (%d bytes)", peer, job.what, job.size)

    def _forget(self, session_id: int) -> None:
        self.endpoint.forget(session_id)
        job = self._jobs.pop(session_id, None)
        if job is not None:
            job.close()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for session_id in list(self._jobs):
            self._forget(session_id)
        self.pump.close()
