"""The UDP service: the endpoint core's events in, operations out.

Theory of operation
-------------------
``UdpApplication`` is the UDP mode's server side without sockets: it reacts to
the events of a ``ServerEndpoint`` (proto/udp/endpoint.py) with the same
``Operations`` as every transport, and answers into the endpoint:

    RequestReceived  PUT -> operations.upload -> accept (receive)
                     GET -> operations.download -> accept (send, read by blocks)
                     LIST, STAT -> the answer built off the loop -> accept (send)
                     REMOVE, MKDIR -> the operation off the loop -> done
                     a refusal -> refuse (code and reason)
    DataReceived     -> upload.write (one write per batch of datagrams)
    EndReceived      -> upload.commit -> finish(0, digest), or finish(code, reason,
                        the digest of what arrived)
    Completed/Failed -> the request's end: log, close, forget

``UdpService`` puts it on a socket behind the asyncio ``CoreDriver``; the
simulator (testing/sim.py) drives the very same application on virtual time over
a MemoryStore. Work that may take long (a STAT hashes a file, a LIST reads a
directory, a large commit fsyncs) goes through ``defer``: a worker thread in the
service, at once in the simulator; its answer re-enters through the driver.

LIST and STAT answers are the TCP mode's entry encoding (protocol.md, U3), sent
like a file of that many bytes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from ..checksum import CHUNK_BYTES, ZERO_DIGEST, TreeHasher
from ..config import ServerConfig
from ..errors import (
    Busy,
    FtransferError,
    InternalError,
    ResumeRefused,
    TlsRequired,
    error_from_code,
)
from ..io.datagram import CoreDriver
from ..io.udp import open_udp_socket
from ..proto.events import Completed, DataReceived, EndReceived, Failed
from ..proto.tcp.frames import encode_entry
from ..proto.udp.endpoint import RequestReceived, ServerEndpoint
from ..proto.udp.packets import MAX_CHUNK_BYTES, Initial, Operation, Resumption
from ..proto.udp.sealed import SealedEndpoint, Ticket, TicketBusy
from ..proto.udp.session import BlockReader, SessionConfig
from .operations import (
    Download,
    Operations,
    Principal,
    Requester,
    Resumable,
    Upload,
    format_peer,
)
from .tcp import INLINE_COMMIT_BYTES, wire_entry

logger = logging.getLogger("ftransfer.server")

T = TypeVar("T")
Defer = Callable[[Callable[[], Any], Callable[[Any], None]], None]
"""``defer(work, then)``: run ``work()`` (maybe elsewhere), then ``then(result)`` on
the driver's side, with the result or the exception it raised."""

SERVER_WINDOW_CHUNKS = 8192
"""Reorder window offered to clients, before the per-session byte bound (endpoint.py)."""
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""A LIST answer larger than this is refused rather than built in memory."""
MAX_DEFERRED_ANSWERS = 16
"""LIST and STAT answers being built, and REMOVEs and MKDIRs being made, at once
(each may hash a file, hold up to MAX_ANSWER_BYTES or fsync a directory); over it
a request gets code 41 (busy) at once."""


PLAINTEXT_REFUSED = "this server encrypts UDP (its keys come over TLS): connect without --insecure"


def open_service_socket(host: str, port: int) -> socket.socket:
    """A bound UDP socket for a service (UDP mode, TFTP)."""
    return open_udp_socket(host, port, connect=False)


class UdpApplication:
    """The server's UDP side, driven by any runner of its endpoint."""

    def __init__(
        self,
        ops: Operations,
        endpoint: ServerEndpoint,
        *,
        now: Callable[[], float],
        defer: Defer,
        plaintext: bool = True,
    ) -> None:
        """``plaintext`` False: only sealed requests are served (a TLS server: the
        keys come over TLS), a plaintext one is refused with code 3."""
        self.ops, self.endpoint, self._now, self._defer = ops, endpoint, now, defer
        self.plaintext = plaintext
        self._jobs: dict[int, Upload | Download] = {}
        self._sending: dict[int, tuple[TreeHasher, int]] = {}
        """A download's hasher and where it started (its chunks are remembered)."""
        self._deferred = 0  # LIST and STAT answers being built

    def close(self) -> None:
        """Abort every upload, close every download (server shutdown)."""
        for job in self._jobs.values():
            if isinstance(job, Upload):
                job.abort("the server is shutting down")
            else:
                job.__exit__(None, None, None)
        self._jobs.clear()

    def handle(self, event: object) -> None:
        """One endpoint event (the driver's on_event)."""
        if isinstance(event, RequestReceived):
            self._decide(event)
        elif isinstance(event, DataReceived):
            self._data(event)
        elif isinstance(event, EndReceived):
            self._end_received(event)
        elif isinstance(event, Completed | Failed):
            self._ended(event)

    # ---- requests -------------------------------------------------------------------

    def _decide(self, request: RequestReceived) -> None:
        principal = request.principal
        if principal is None and not self.plaintext:
            self._refuse(request, TlsRequired(PLAINTEXT_REFUSED))
            return
        who = Requester(
            peer=format_peer(*request.address),
            transport="udp",
            principal=principal if isinstance(principal, Principal) else self.ops.anonymous,
        )
        operation = request.operation
        try:
            if operation is Operation.PUT:
                self._put(request, who)
            elif operation is Operation.GET:
                self._get(request, who)
            elif operation is Operation.REMOVE:
                path = request.initial.path
                self._change_later(request, lambda: self.ops.remove(who, path))
            elif operation is Operation.MKDIR:
                path, parents = request.initial.path, request.initial.size == 1
                self._change_later(request, lambda: self.ops.mkdir(who, path, parents=parents))
            else:
                self._answer_later(request, who)
        except FtransferError as exc:
            self._refuse(request, exc)
        except Exception:  # a request is always answered: it holds a slot until then
            logger.exception("udp %s: internal error", who.peer)
            self._refuse(request, InternalError("internal server error"))

    def _refuse(self, request: RequestReceived, exc: FtransferError) -> None:
        code = exc.code or InternalError.code
        self.endpoint.refuse(request, code=code, message=str(exc), now=self._now())

    def _put(self, request: RequestReceived, who: Requester) -> None:
        initial = request.initial
        if (initial.resume is not None and initial.resume.offset) or self.ops.remote:
            self._put_later(request, who)
            return
        self._accept_upload(request, self._open_upload(who, initial))

    def _put_later(self, request: RequestReceived, who: Requester) -> None:
        """A resume reads the partial's journal and its last chunk again (and may
        wait for an older upload's flusher): deferred, off the loop."""
        self._later(
            request,
            lambda: self._open_upload(who, request.initial),
            lambda upload: self._accept_upload(request, upload),
        )

    def _later(
        self,
        request: RequestReceived,
        work: Callable[[], T],
        done: Callable[[T], None],
        *,
        busy: str = "too many requests at once, try later",
        failed: Callable[[FtransferError], None] = lambda _error: None,
    ) -> None:
        """Run ``work`` off the loop (it may read a directory, hash a file, fsync
        a directory or read a partial back), then ``done`` with its result on the
        loop; a refusal answers the request (and ``failed`` lets go of what it
        held). At most MAX_DEFERRED_ANSWERS at once; over that, Busy at once."""
        if self._deferred >= MAX_DEFERRED_ANSWERS:
            failed(Busy(busy))
            self._refuse(request, Busy(busy))
            return
        self._deferred += 1

        def then(result: T | BaseException) -> None:
            self._deferred -= 1
            if not isinstance(result, BaseException):
                try:
                    done(result)
                except FtransferError as exc:  # (as a request handled at once)
                    self._refuse(request, exc)
                return
            error = result if isinstance(result, FtransferError) else None
            if error is None:
                logger.error("udp %s failed: %r", request.initial.path, result)
                error = InternalError("internal server error")
            failed(error)
            self._refuse(request, error)

        self._defer(work, then)

    def _accept_upload(self, request: RequestReceived, upload: Upload) -> None:
        initial = request.initial
        resume = None
        if initial.resume is not None:  # (an old client sends none)
            resume = Resumption(offset=upload.start, transfer_id=bytes(16), digest=upload.prefix)
        session = self.endpoint.accept(
            request,
            size=0,
            mtime_ns=-1,
            now=self._now(),
            read_chunk=None,
            max_rate=self.ops.receive_rate(),
            resume=resume,
        )
        self._jobs[session] = upload

    def _open_upload(self, who: Requester, initial: Initial) -> Upload:
        """The upload an INITIAL asks for: resumable, and resumed from what this
        server holds (at most what the client offered), when it says so."""
        offered = initial.resume

        def open_upload(resumable: Resumable | None) -> Upload:
            return self.ops.upload(
                who,
                initial.path,
                size=initial.size,
                mtime_ns=initial.mtime_ns,
                mode=initial.mode,
                exclusive=initial.exclusive,
                resumable=resumable,
            )

        if offered is None or offered.transfer_id == bytes(16):  # (zeros: no transfer)
            return open_upload(None)
        fresh = Resumable(transfer_id=offered.transfer_id, first_digest=ZERO_DIGEST)
        if offered.offset:
            held = self.ops.partial(
                who,
                initial.path,
                size=initial.size,
                mtime_ns=initial.mtime_ns,
                resumable=Resumable(transfer_id=offered.transfer_id, first_digest=offered.digest),
            )
            start = min(held.offset, offered.offset) // CHUNK_BYTES * CHUNK_BYTES
            if start:
                resumed = Resumable(
                    transfer_id=offered.transfer_id, first_digest=offered.digest, offset=start
                )
                try:
                    return open_upload(resumed)
                except ResumeRefused:  # (being written by another transfer just now)
                    pass
        return open_upload(fresh)

    def _get(self, request: RequestReceived, who: Requester) -> None:
        if self.ops.remote:  # (an object store answers over the network: off the loop)
            path = request.initial.path
            self._later(
                request,
                lambda: self.ops.download(who, path),
                lambda download: self._get_opened(request, download),
            )
            return
        self._get_opened(request, self.ops.download(who, request.initial.path))

    def _get_opened(self, request: RequestReceived, download: Download) -> None:
        initial = request.initial
        asked = initial.resume
        if asked is None:
            self._send(request, download, None, [])
            return

        # A client with a partial of it: its prefix is checked against the chunk
        # digests the store remembers, or reads the prefix once (after a restart):
        # deferred, so no other session waits on that read.
        def resumed(chunks: list[bytes]) -> None:
            start = len(chunks) * CHUNK_BYTES
            resume = Resumption(offset=start, transfer_id=bytes(16), digest=ZERO_DIGEST)
            self._send(request, download, resume, chunks)

        self._later(
            request,
            lambda: download.resume_point(
                asked.offset, initial.size, initial.mtime_ns, asked.digest
            ),
            resumed,
            failed=lambda error: self._drop(download, error),
        )

    @staticmethod
    def _drop(download: Download, error: FtransferError) -> None:
        download.failed(error)
        download.__exit__(None, None, None)

    def _send(
        self,
        request: RequestReceived,
        download: Download,
        resume: Resumption | None,
        chunks: list[bytes],
    ) -> None:
        """Start the session that sends ``download`` (from the chunks' end, a resume)."""
        now = self._now()
        hasher = TreeHasher(chunks=chunks)
        session = self.endpoint.accept(
            request,
            size=download.size,
            mtime_ns=download.mtime_ns,
            mode=download.mode,
            now=now,
            read_chunk=BlockReader(download.read),
            limits=self.ops.send_limits(now, asked=request.initial.max_rate),
            resume=resume,
            hasher=hasher,
        )
        self._jobs[session] = download
        self._sending[session] = (hasher, len(chunks) * CHUNK_BYTES)

    def _change_later(self, request: RequestReceived, change: Callable[[], None]) -> None:
        """REMOVE and MKDIR fsync a directory: deferred as LIST and STAT are, so no
        other session waits on that disk; success is an ACCEPT with session 0."""
        self._later(request, change, lambda _none: self.endpoint.done(request, now=self._now()))

    def _answer_later(self, request: RequestReceived, who: Requester) -> None:
        """LIST and STAT read a whole directory or hash a whole file: deferred, so a
        100 GiB STAT does not stall every other client (the endpoint ignores a
        repeated INITIAL while the work runs: the ACCEPT will answer both)."""
        stat = request.operation is Operation.STAT
        path = request.initial.path

        def answer(result: bytes) -> None:
            self.endpoint.accept(
                request,
                size=len(result),
                mtime_ns=-1,
                now=self._now(),
                read_chunk=lambda offset, n: result[offset : offset + n],
            )

        self._later(
            request,
            lambda: self._stat_answer(who, path) if stat else self._list_answer(who, path),
            answer,
            busy="too many listings and stats at once, try later",
        )

    def _stat_answer(self, who: Requester, path: str) -> bytes:
        entry, digest = self.ops.stat(who, path)
        return encode_entry(wire_entry(entry)) + (digest or ZERO_DIGEST)

    def _list_answer(self, who: Requester, path: str) -> bytes:
        parts: list[bytes] = []
        total = 0
        for entry in self.ops.listing(who, path):
            parts.append(encode_entry(wire_entry(entry)))
            total += len(parts[-1])
            if total > MAX_ANSWER_BYTES:
                raise InternalError("directory listing too large for UDP; use TCP")
        return b"".join(parts)

    # ---- sessions ------------------------------------------------------------------------

    def _data(self, event: DataReceived) -> None:
        upload = self._jobs.get(event.session)
        if not isinstance(upload, Upload) or upload.ended:
            return
        try:
            upload.write(event.data)  # one write per batch of datagrams
        except FtransferError as exc:
            self.endpoint.abort(
                event.session, code=exc.code or InternalError.code, message=str(exc)
            )

    def _end_received(self, event: EndReceived) -> None:
        upload = self._jobs.get(event.session)
        if not isinstance(upload, Upload):
            return
        session = event.session

        def then(result: bytes | BaseException) -> None:
            if isinstance(result, BaseException):
                code = result.code if isinstance(result, FtransferError) else InternalError.code
                self.endpoint.finish(
                    session,
                    code=code or InternalError.code,
                    message=str(result),
                    digest=upload.digest,
                    now=self._now(),
                )
            else:
                self.endpoint.finish(session, code=0, message="", digest=result, now=self._now())

        if upload.written <= INLINE_COMMIT_BYTES:
            then(_attempt(lambda: upload.commit(event.digest)))
        else:
            self._defer(lambda: upload.commit(event.digest), then)

    def _ended(self, event: Completed | Failed) -> None:
        job = self._jobs.pop(event.session, None)
        if job is None:
            return
        if isinstance(job, Upload):
            if isinstance(event, Failed) and not job.ended:
                job.fail(error_from_code(event.code, event.message))
            return
        hasher, start = self._sending.pop(event.session, (None, 0))
        with job:
            if hasher is not None:
                job.remember_chunks(hasher.chunks)  # (for a resume after a cut)
            if isinstance(event, Completed):
                job.sent(event.digest, start=start)
            else:
                job.failed(error_from_code(event.code, event.message))


def _attempt(work: Callable[[], T]) -> T | BaseException:
    try:
        return work()
    except FtransferError as exc:
        return exc


class UdpService:
    """Serves the UDP protocol on one socket."""

    def __init__(self, ops: Operations, config: ServerConfig, sock: socket.socket) -> None:
        session_config = SessionConfig(
            chunk_bytes=MAX_CHUNK_BYTES, window=SERVER_WINDOW_CHUNKS, give_up_s=config.udp_give_up_s
        )
        self.endpoint = ServerEndpoint(
            secret=secrets.token_bytes(32),
            rng=random.SystemRandom(),
            config=session_config,
            max_sessions=config.max_connections,
            max_per_address=config.max_connections_per_address,
        )
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Future[Any]] = set()
        self.sealed: SealedEndpoint | None = None
        if config.tls:
            self.sealed = SealedEndpoint(self.endpoint, random_bytes=secrets.token_bytes)
        self.app = UdpApplication(
            ops, self.endpoint, now=self._loop.time, defer=self._defer, plaintext=not config.tls
        )
        core = self.sealed if self.sealed is not None else self.endpoint
        self.driver = CoreDriver(core, sock, self.app.handle)
        self.address = sock.getsockname()

    def issue_ticket(self, principal: Principal, host: str) -> Ticket:
        """A ticket that seals one UDP request of ``principal`` (asked for over TLS
        from ``host``); Busy over the caps."""
        assert self.sealed is not None  # only a TLS server issues tickets
        try:
            return self.sealed.issue(principal, host, self._loop.time())
        except TicketBusy as exc:
            raise Busy(str(exc)) from None

    def _defer(self, work: Callable[[], Any], then: Callable[[Any], None]) -> None:
        future = self._loop.run_in_executor(None, work)
        self._tasks.add(future)

        def done(finished: asyncio.Future[Any]) -> None:
            self._tasks.discard(finished)
            if finished.cancelled():
                return
            error = finished.exception()
            then(error if error is not None else finished.result())
            self.driver.step()

        future.add_done_callback(done)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.app.close()
        self.driver.close()
