"""The TCP service: one task per connection, translating frames to operations.

Theory of operation
-------------------
A ``TcpSession`` reads one request at a time from its ``FrameStream`` and answers
it before reading the next, so replies leave in request order and a client that
pipelines thousands of requests costs the server one request's worth of state.
What each request *does* is decided by ``Operations`` (names, policy, storage,
the log line); this module only maps frames to those calls and results to frames:

    PUT        -> operations.upload; DATA streams into it; END -> commit (with
                  fsync: in a worker thread, grouped with the uploads that end
                  while it runs, server/commits.py) -> PUT_OK
    GET        -> operations.download -> FILE, DATA (send_file), END; a file that
                  shrinks or fails to read mid-way (FileUnreadable) -> its frame
                  completed, ERROR 40 in place of END, the connection goes on
    LIST/STAT  -> operations.listing / stat, in a worker thread (they may read a
                  whole directory or hash a whole file) -> ENTRIES..., LIST_END / STAT_OK
    REMOVE/MKDIR/MOVE -> the operation, in a worker thread (directory fsyncs) -> OK
    any refusal -> ERROR with the error's code and reason

LOGIN, when it comes, is the first request after HELLO (the core allows it
nowhere else): ``Operations.login`` checks it in a worker thread (one scrypt),
and the session then speaks for that user (``Requester.principal``). A failure is
answered no earlier than the verdict says (the same delay for a wrong password
and an unknown user) with ERROR 44, and the connection is closed. Without LOGIN
the session is anonymous: read-only, or nothing at all on a server with users.

Every wait on the peer has a deadline: an absolute one for the HELLO (slow-header
defence) and the stream's idle watchdog after that. The connection ends with an
ERROR frame whenever it can (no frame half written): code 1 and the reason for a
protocol error, 42 for a timeout, 50 for an internal error; a clean close
otherwise. Cancellation (shutdown) aborts an upload in progress, removing its
temporary file; a store call under way in a worker thread is waited for first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ..checksum import CHUNK_BYTES, ZERO_DIGEST, TreeHasher
from ..config import (
    LIST_BATCH_BYTES,
    LIST_BATCH_ENTRIES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ServerConfig,
)
from ..errors import (
    Aborted,
    AuthenticationFailed,
    ConnectionFailed,
    FtransferError,
    InternalError,
    ProtocolError,
    RemoteProtocolError,
    TlsRequired,
    TransferTimeout,
    UnsupportedVersion,
)
from ..io.files import FileUnreadable, SinkFailed
from ..io.stream import FrameStream
from ..proto.tcp import events as ev
from ..proto.tcp.connection import negotiate_version
from ..proto.tcp.frames import entry_bytes
from ..storage.entry import Entry
from .commits import GroupCommit
from .operations import Operations, Principal, Requester, Resumable, Upload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..proto.udp.sealed import Ticket
    from .users import Verdict

IssueTicket = Callable[[Principal, str], "Ticket"]
"""The UDP service's ``issue_ticket(principal, host)``."""

logger = logging.getLogger("ftransfer.server")
T = TypeVar("T")

INLINE_COMMIT_BYTES = 1 << 20
"""Without fsync, uploads up to this size are committed on the event loop (a rename
is quicker than the trip to a thread); the others, and every commit that fsyncs
(milliseconds, or seconds on a busy disk), in a worker thread, where a slow disk
stalls no one else."""
SENT_DIGESTS_KEPT = 4096
"""Digests of recent downloads kept to compare with the client's VERIFIED."""


def wire_entry(entry: Entry) -> ev.Entry:
    """The protocol's entry for a store's (the same fields: storage knows no protocol)."""
    return ev.Entry(
        name=entry.name,
        kind=ev.EntryKind(int(entry.kind)),
        size=entry.size,
        mtime_ns=entry.mtime_ns,
        mode=entry.mode,
    )


def take_batch(
    entries: Iterator[Entry], budget: int, max_entries: int = LIST_BATCH_ENTRIES
) -> list[ev.Entry]:
    """The next entries for one ENTRIES frame (empty at the end): up to
    ``max_entries`` of them, stopping once they encode to ``budget`` bytes or more
    (so at most one entry, 276 bytes, over it). Sizes are counted in encoded bytes:
    a name of 80 Japanese characters is 240 of them."""
    batch: list[ev.Entry] = []
    size = 0
    for entry in entries:
        wire = wire_entry(entry)
        batch.append(wire)
        size += entry_bytes(wire)
        if size >= budget or len(batch) >= max_entries:
            break
    return batch


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in the loop's default executor (its worker threads are
    bounded; a session waits for one call at a time). If the session is cancelled
    meanwhile, the call is still waited for before the cancellation goes on, so
    that nothing (an upload's abort, a listing's close) touches what it uses."""
    call = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await call
        raise
    finally:
        del call  # the call's exception holds this frame: no cycle to wait for the GC


def version_problem(offer: ev.HelloOffered) -> str:
    """The reason of the ERROR 2 for a HELLO this server cannot speak."""
    offered = f"{offer.min_version}..{offer.max_version}"
    if offer.min_version > offer.max_version:
        return f"the client offered no protocol version (the range {offered} is empty)"
    return (
        f"this server speaks protocol version {PROTOCOL_VERSION}, the client offered "
        f"{offered}: upgrade the older side"
    )


class _LoginFailed(Exception):
    """LOGIN was refused: the ERROR is sent, the session ends."""


def verdict_message(verdict: Verdict) -> str:
    """What a refused client is told: the same for a wrong password and an
    unknown user; a lockout says so (it is about the address, not the account)."""
    from .users import FAILED_MESSAGE

    if verdict.locked_s > 0:
        return f"too many failed logins from this address: try again in {verdict.locked_s:.0f} s"
    return FAILED_MESSAGE


class TcpSession:
    """One client connection: reads requests, answers each in order."""

    def __init__(
        self,
        ops: Operations,
        config: ServerConfig,
        stream: FrameStream,
        who: Requester,
        issue_ticket: IssueTicket | None = None,
    ) -> None:
        """``issue_ticket``: the UDP service's (a TLS server with UDP), for TICKET."""
        self.ops, self.config, self.stream, self.who = ops, config, stream, who
        self.issue_ticket = issue_ticket
        self._sent_digests: collections.deque[bytes] = collections.deque(maxlen=SENT_DIGESTS_KEPT)
        self._commits = GroupCommit(stream.send, in_thread)
        now = asyncio.get_running_loop().time()
        stream.send_limits = ops.send_limits(now)
        stream.receive_limits = ops.receive_limits(now)
        self._hello_deadline = asyncio.get_running_loop().time() + config.hello_timeout_s

    async def run(self) -> None:
        peer = self.who.peer
        try:
            if await self._hello():
                await self._serve_requests()
        except (TimeoutError, TransferTimeout) as exc:
            logger.info("%s: timed out, closing", peer)
            reason = str(exc) if isinstance(exc, TransferTimeout) else "no HELLO in time"
            await self._end_with(TransferTimeout(f"timed out: {reason}"))
        except ProtocolError as exc:
            logger.warning("%s: protocol error: %s", peer, exc)
            await self._end_with(RemoteProtocolError(f"protocol error: {exc}"))
        except ConnectionFailed as exc:
            logger.info("%s: %s", peer, exc)
        except _LoginFailed:
            pass  # answered and logged; the connection ends
        except Exception as exc:
            logger.exception("%s: internal error, closing the connection", peer)
            await self._end_with(InternalError(f"internal server error: {type(exc).__name__}"))
        finally:
            await self._commits.close()
            self.stream.close()

    async def _end_with(self, error: FtransferError) -> None:
        """The last ERROR, after the replies of the uploads committing now (the
        client must not take it for their answer), the waiting ones aborted."""
        await self._commits.close()
        self.stream.close_with_error(error)

    async def _hello(self) -> bool:
        async with asyncio.timeout_at(self._hello_deadline):
            event = await self.stream.next_event()
        if not isinstance(event, ev.HelloOffered):
            return False  # a clean close before HELLO; anything else raised already
        version = negotiate_version(event)
        if version is None:
            self._fail(UnsupportedVersion(version_problem(event)))
            return False
        anonymous = self.who.principal
        self.stream.send(
            ev.HelloAccepted(
                version=version,
                max_frame_bytes=MAX_FRAME_BYTES,
                read_only=self.config.read_only or not anonymous.write,
                login_required=not anonymous.served,
            )
        )
        return True

    async def _login(self, request: ev.LoginRequested) -> None:
        loop = asyncio.get_running_loop()
        verdict = await in_thread(
            self.ops.login,
            self.who,
            self.stream.peer[0],
            request.user,
            request.password,
            loop.time(),
        )
        if verdict.user is None:
            await asyncio.sleep(max(0.0, verdict.answer_at - loop.time()))
            self.stream.close_with_error(AuthenticationFailed(verdict_message(verdict)))
            raise _LoginFailed
        self.who = Requester(
            peer=self.who.peer,
            transport=self.who.transport,
            principal=self.ops.principal_of(verdict),
        )
        self.stream.send(ev.Done())

    async def _serve_requests(self) -> None:
        while True:
            event = await self.stream.next_event()
            if isinstance(event, ev.ConnectionClosed):
                await self._commits.settle()
                return
            if not isinstance(event, ev.PutRequested) or self._commits.full:
                await self._commits.settle()  # (replies go in request order)
            await HANDLERS[type(event)](self, event)
            await self.stream.drain()

    def _fail(self, error: FtransferError) -> None:
        self.stream.send(ev.Failed(code=error.code or InternalError.code, message=str(error)))

    # ---- transfers ------------------------------------------------------------------

    async def _put(self, request: ev.PutRequested) -> None:
        resumable = None
        if request.transfer_id:  # PUT_AT
            resumable = Resumable(
                transfer_id=request.transfer_id,
                first_digest=request.first_digest,
                offset=request.offset,
            )
        try:
            open_upload = functools.partial(
                self.ops.upload,
                self.who,
                request.path,
                size=request.size,
                mtime_ns=request.mtime_ns,
                mode=request.mode,
                exclusive=request.exclusive,
                resumable=resumable,
            )
            # (a resume reads a journal and truncates, an object store answers
            # over the network: off the loop)
            off_loop = request.offset or self.ops.remote
            upload = await in_thread(open_upload) if off_loop else open_upload()
        except FtransferError as exc:
            await self._commits.settle()
            self._fail(exc)  # early refusal: the core discards the rest of the upload
            return
        with contextlib.ExitStack() as owned:
            owned.enter_context(upload)  # (until the commit takes it over)
            self.stream.set_data_sink(upload.write)
            try:
                event = await self.stream.next_event()
            except SinkFailed as exc:
                await self._commits.settle()
                self._fail(exc.cause)
                return
            finally:
                self.stream.set_data_sink(None)
            if isinstance(event, ev.FileAborted):
                upload.abort("the client sent ABORT")
                await self._commits.settle()
                self._fail(Aborted("upload aborted by the client; nothing was written"))
                return
            assert isinstance(event, ev.FileEnded)  # the core allows nothing else mid-file
            await self._keep_to_receive_limits()
            owned.pop_all()
            self._commit(upload, request, event.digest)

    async def _keep_to_receive_limits(self) -> None:
        """An upload whose bytes came faster than the limit (they were in the
        socket's buffers) is answered when the limit says it could have come."""
        limits = self.stream.receive_limits
        if limits is not None:
            wait = limits.wait(asyncio.get_running_loop().time())
            if wait > 0:
                await asyncio.sleep(wait)

    def _commit(self, upload: Upload, request: ev.PutRequested, digest: bytes) -> None:
        """Commit at once when that costs no fsync and nothing waits before it;
        else hand the upload to the group commit (server/commits.py)."""
        inline = request.size <= INLINE_COMMIT_BYTES and not self.config.fsync
        if not (inline and self._commits.pending == 0):
            self._commits.add(upload, digest)
            return
        with upload:
            try:
                stored = upload.commit(digest)
            except FtransferError as exc:
                self._fail(exc)
                return
        self.stream.send(ev.PutCommitted(digest=stored))

    async def _partial(self, request: ev.PartialRequested) -> None:
        resumable = Resumable(transfer_id=request.transfer_id, first_digest=request.first_digest)
        try:
            probe = await in_thread(
                functools.partial(
                    self.ops.partial,
                    self.who,
                    request.path,
                    size=request.size,
                    mtime_ns=request.mtime_ns,
                    resumable=resumable,
                )
            )
        except FtransferError as exc:
            self._fail(exc)
            return
        self.stream.send(ev.PartialHeld(offset=probe.offset, prefix=probe.prefix))

    async def _get(self, request: ev.GetRequested) -> None:
        try:
            if self.ops.remote:
                download = await in_thread(self.ops.download, self.who, request.path)
            else:
                download = self.ops.download(self.who, request.path)
        except FtransferError as exc:
            self._fail(exc)
            return
        with download:
            chunks: list[bytes] = []
            if request.prefix:  # GET_AT: the client has a partial of it
                chunks = await in_thread(
                    download.resume_point,
                    request.offset,
                    request.size,
                    request.mtime_ns,
                    request.prefix,
                )
            start = len(chunks) * CHUNK_BYTES
            self.stream.send(
                ev.FileStarted(
                    size=download.size,
                    mtime_ns=download.mtime_ns,
                    mode=download.mode,
                    offset=start if request.prefix else None,
                )
            )
            hasher = TreeHasher(chunks=chunks) if download.digest is None else None
            try:
                digest = await self.stream.send_file(download, start=start, hasher=hasher)
            except FileUnreadable as exc:
                download.failed(exc)
                self._fail(exc)  # ERROR in place of END: the client discards the file
                return
            finally:
                if hasher is not None:
                    download.remember_chunks(hasher.chunks)  # (for a GET_AT after a cut)
            assert digest is not None  # never cancelled
            self.stream.send(ev.FileEnded(digest=digest))
            download.sent(digest, start=start)
            self._sent_digests.append(digest)

    async def _verified(self, report: ev.DownloadVerified) -> None:
        sent = self._sent_digests.popleft() if self._sent_digests else None
        if sent is not None and sent != report.digest:
            logger.warning("%s: the client computed a different digest", self.who.peer)

    # ---- the rest -------------------------------------------------------------------

    async def _list(self, request: ev.ListRequested) -> None:
        entries = self.ops.listing(self.who, request.path)
        try:
            while batch := await in_thread(take_batch, entries, LIST_BATCH_BYTES):
                self.stream.send(ev.Listed(entries=tuple(batch)))
                await self.stream.drain()
        except FtransferError as exc:
            self._fail(exc)
            return
        finally:
            entries.close()
        self.stream.send(ev.ListEnded())

    async def _stat(self, request: ev.StatRequested) -> None:
        try:
            entry, digest = await in_thread(self.ops.stat, self.who, request.path)
        except FtransferError as exc:
            self._fail(exc)
            return
        self.stream.send(ev.Stated(entry=wire_entry(entry), digest=digest or ZERO_DIGEST))

    async def _simple(self, action: Callable[[], None]) -> None:
        try:
            await in_thread(action)  # a directory fsync, or a slow disk: not on the loop
        except FtransferError as exc:
            self._fail(exc)
            return
        self.stream.send(ev.Done())

    async def _ticket(self, _request: ev.TicketRequested) -> None:
        """The keys for one sealed UDP request of this connection's principal."""
        if self.issue_ticket is None:
            self._fail(TlsRequired("no UDP tickets here: this server has no encrypted UDP"))
            return
        issue, principal, host = self.issue_ticket, self.who.principal, self.stream.peer[0]
        try:
            ticket = self.ops.ticket(self.who, lambda: issue(principal, host))
        except FtransferError as exc:
            self._fail(exc)
            return
        lifetime = int(ticket.lifetime_s)
        self.stream.send(
            ev.TicketIssued(ticket=ticket.ticket, lifetime_s=lifetime, secret=ticket.secret)
        )

    async def _ping(self, request: ev.PingRequested) -> None:
        """Echo a PING (allowed to anyone, before a login too: it touches nothing)."""
        self.stream.send(ev.Ponged(seq=request.seq, timestamp_ns=request.timestamp_ns))

    async def _remove(self, request: ev.RemoveRequested) -> None:
        await self._simple(lambda: self.ops.remove(self.who, request.path))

    async def _mkdir(self, request: ev.MkdirRequested) -> None:
        await self._simple(lambda: self.ops.mkdir(self.who, request.path, parents=request.parents))

    async def _move(self, request: ev.MoveRequested) -> None:
        await self._simple(
            lambda: self.ops.move(
                self.who, request.source, request.target, exclusive=request.exclusive
            )
        )


HANDLERS: dict[type, Callable[[TcpSession, Any], Awaitable[None]]] = {
    ev.PutRequested: TcpSession._put,
    ev.GetRequested: TcpSession._get,
    ev.PartialRequested: TcpSession._partial,
    ev.ListRequested: TcpSession._list,
    ev.StatRequested: TcpSession._stat,
    ev.RemoveRequested: TcpSession._remove,
    ev.MkdirRequested: TcpSession._mkdir,
    ev.MoveRequested: TcpSession._move,
    ev.DownloadVerified: TcpSession._verified,
    ev.LoginRequested: TcpSession._login,
    ev.TicketRequested: TcpSession._ticket,
    ev.PingRequested: TcpSession._ping,
}
"""What each request runs: functions, not bound methods, so that a session holds
no reference cycle (one would keep its connection's TLS memory until the GC's
next full pass)."""
