"""The client's half of the TCP protocol, written once for both flavours.

Theory of operation
-------------------
``TcpLogic`` owns the connection's sans-IO ``Connection`` and expresses every
request (put, get, ls, stat, rm, mkdir, mv) as a *generator* that yields the six
socket primitives of io/tcp_sockets.py (``Write``, ``Flush``, ``Sendfile``,
``Copy``, ``Read``, ``Poll``) and is sent their answers (``Copy`` in place of
``Sendfile`` over TLS, ``copy_files``). ``run_sync`` carries them out on a
``BlockingSocket`` (``Client``), ``run_async`` on an ``AsyncSocket``
(``AsyncClient``): the protocol logic exists once, and each flavour is a loop of a
few lines, as httpx's two clients share httpcore's logic through a backend port.

What the logic does:

- HELLO is written without waiting; the first request follows in the same round
  trip, and the answer to HELLO is read with the first reply. A TCP service that
  is not ftransfer is a protocol error (exit 8), not a timeout a minute later: at
  once if it sends bytes that are no frame (a banner, an HTTP answer) or hangs up
  without answering; after the connect timeout (10 s) if it says nothing, which
  leaves a loaded server (a slow disk, an fsync on its loop) time to answer.
- ``put_many`` pipelines: PUT, DATA and END for every file back to back, reading
  whatever replies have arrived between frames without waiting, so N small files
  cost one round trip, and a refusal stops its file's bytes at the next frame
  (ABORT). Each file is opened when its turn comes and closed after its END, so a
  batch holds one descriptor whatever its size. One outcome per file, in order,
  each also handed to the progress as soon as it and those before it are known.
- Downloads go into a sink (client/local.py) made from the FILE header: written
  and hashed as they arrive, committed only if the server's xxh3-128 matches; a
  sink that fails mid-file has the rest of the file read and dropped, so the
  connection stays usable. VERIFIED, the client's digest of a download, goes out
  with the next request, or when the client closes the connection.
- Errors the server sent are raised as their class, naming the server
  (``127.0.0.1:9021: x: No such file``); any other failure leaves the connection
  ``broken``, and so do an ERROR after which the server closes (``ENDING_CODES``)
  and a lost connection (``guarded``): the client opens a new one next time.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Generator, Sequence

from .._records import Record, evolve
from ..checksum import ZERO_DIGEST, TreeHasher, new_hasher
from ..config import MAX_FRAME_BYTES, PROTOCOL_VERSION
from ..errors import (
    ConnectionFailed,
    FtransferError,
    IntegrityError,
    ProtocolError,
    RemoteProtocolError,
    ResumeRefused,
    TransferTimeout,
    UnsupportedVersion,
    error_from_code,
)
from ..io.files import (
    CopyFrame,
    FileUnreadable,
    SendfileFrame,
    SinkFailed,
    file_frames,
    new_scratch,
)
from ..io.tcp_sockets import AsyncSocket, BlockingSocket, ReadTimedOut
from ..proto.ratelimit import bucket, frame_bytes
from ..proto.tcp import events as ev
from ..proto.tcp.connection import Connection, Role, StreamState
from ..storage.entry import Entry, EntryKind
from ..storage.names import escape
from ..storage.partial import Resume
from . import trace
from .drive import drive, drive_async
from .local import LocalFile, Sink, local_label
from .result import Progress, Stat, TransferResult
from .resume import DownloadResume, Resumes, UploadRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    from ..checksum import Hasher

    T = TypeVar("T")

ENDING_CODES = frozenset({1, 2, 3, 41, 42, 44, 50})
"""ERROR codes after which the server closes the connection (protocol.md, section 6:
protocol error, no common version, TLS required, too many connections, timeout,
authentication failed, internal error)."""


# ---- the primitives the logic asks for ------------------------------------------------


class Write(Record):
    data: bytes


class Flush(Record):
    pass


class Sendfile(Record):
    fd: int
    offset: int
    count: int


class Copy(Record):
    """A file range read, hashed and written by the socket (TLS: files.CopyFrame)."""

    fd: int
    offset: int
    count: int
    hasher: Hasher | None


class Read(Record):
    large: bool
    timeout: float | None = None


class Poll(Record):
    large: bool


class Sleep(Record):
    """Wait (a rate limit's debt), after what is written has gone out."""

    seconds: float


Effect = Write | Flush | Sendfile | Copy | Read | Poll | Sleep
Op = Generator[Effect, object, "T"]


def run_sync(sock: BlockingSocket, op: Op[T]) -> T:
    """Carry out ``op``'s requests on a blocking socket; its result."""
    return drive(op, lambda effect: _perform_sync(sock, effect))


def _perform_sync(sock: BlockingSocket, effect: Effect) -> object:
    if isinstance(effect, Write):
        sock.write(effect.data)
        return None
    if isinstance(effect, Read):
        return sock.read(effect.large, effect.timeout)
    if isinstance(effect, Poll):
        return sock.poll(effect.large)
    if isinstance(effect, Sendfile):
        return sock.sendfile(effect.fd, effect.offset, effect.count)
    if isinstance(effect, Copy):
        return sock.copy_range(effect.fd, effect.offset, effect.count, effect.hasher)
    sock.flush()
    if isinstance(effect, Sleep):
        time.sleep(effect.seconds)
    return None


async def run_async(sock: AsyncSocket, op: Op[T]) -> T:
    """Carry out ``op``'s requests on the running asyncio loop; its result."""
    return await drive_async(op, lambda effect: _perform_async(sock, effect))


async def _perform_async(sock: AsyncSocket, effect: Effect) -> object:
    if isinstance(effect, Write):
        sock.write(effect.data)
        return None
    if isinstance(effect, Read):
        return await sock.read(effect.large, effect.timeout)
    if isinstance(effect, Poll):
        return await sock.poll(effect.large)
    if isinstance(effect, Sendfile):
        return await sock.sendfile(effect.fd, effect.offset, effect.count)
    if isinstance(effect, Copy):
        return await sock.copy_range(effect.fd, effect.offset, effect.count, effect.hasher)
    await sock.flush()
    if isinstance(effect, Sleep):
        import asyncio

        await asyncio.sleep(effect.seconds)
    return None


# ---- the logic ------------------------------------------------------------------------


def wire_to_entry(wire: ev.Entry) -> Entry:
    """A client's entry for the protocol's (the same fields)."""
    return Entry(
        name=wire.name,
        kind=EntryKind(int(wire.kind)),
        size=wire.size,
        mtime_ns=wire.mtime_ns,
        mode=wire.mode,
    )


GET_WINDOW = 64
"""GETs a batch keeps ahead of the download being read: enough to hide a round trip
behind small files, few enough that the server's replies never wait on our writes."""


class DownloadJob(Record):
    """One download of a batch: what, where its bytes go, the local name to report."""

    remote: str
    make_sink: Callable[[ev.FileStarted, Resume | None], Sink]
    local: str
    target: str | None = None
    """The local file it becomes (None: a stream), where a partial of it may be."""


class _Put:
    """One upload of a pipelined batch, until its reply."""

    def __init__(
        self, index: int, remote: str, source: LocalFile, record: UploadRecord | None = None
    ) -> None:
        self.index, self.remote, self.source = index, remote, source
        self.record = record
        """Its resume record (a file over one chunk, resume on)."""
        self.start = 0
        """Where its DATA starts (a resume: the server has the bytes before)."""
        self.hasher: TreeHasher | None = None
        self.started = time.perf_counter()
        self.digest: bytes | None = None
        self.refused = False
        self.failed_here: FtransferError | None = None
        """Our side gave the file up (it changed while being sent)."""


class _Outcomes:
    """A batch's outcomes by index, handed to ``progress`` in the files' order as
    soon as they are known (a file that could not be opened waits for the replies
    of the files before it, which come in order anyway)."""

    def __init__(self, count: int, progress: Progress | None) -> None:
        self._outcomes: list[TransferResult | FtransferError | None] = [None] * count
        self._progress = progress
        self._reported = 0

    def set(self, index: int, outcome: TransferResult | FtransferError) -> None:
        self._outcomes[index] = outcome
        while self._reported < len(self._outcomes):
            known = self._outcomes[self._reported]
            if known is None:
                return
            self._reported += 1
            if self._progress is not None:
                self._progress.file_outcome(known)

    def done(self) -> list[TransferResult | FtransferError]:
        done = [outcome for outcome in self._outcomes if outcome is not None]
        assert len(done) == len(self._outcomes)
        return done


class TcpLogic:
    """One connection's client side, as generators of socket primitives."""

    def __init__(
        self,
        server: str,
        hello_timeout_s: float,
        login: tuple[str, str] | None = None,
        limit_rate: int | None = None,
        *,
        copy_files: bool = False,
        resumes: Resumes | None = None,
    ) -> None:
        """``limit_rate``: bytes per second this connection moves at most, each way
        (one bucket for every file of a batch). ``copy_files``: the socket encrypts
        (TLS), so file bodies are read and hashed by it (``Copy``), not sent with
        sendfile and read again for the digest."""
        self.server = server
        self._copy_files = copy_files
        self._resumes = resumes
        """Where resume records and partials are kept (None: --no-resume)."""
        self._refused_resumes: list[int] = []
        """The batch's files whose PUT_AT was refused (ERROR 31): sent again from 0."""
        now = time.monotonic()
        self._limits = {"out": bucket(limit_rate, now), "in": bucket(limit_rate, now)}
        self.conn = Connection(Role.CLIENT)
        self._hello_deadline = hello_timeout_s
        self._hello_answered = False
        self._login_pending = login is not None
        self._ended = False
        """The server ended the connection (an ERROR that closes it), or it was lost."""
        self._scratch = new_scratch()
        self._queued: list[bytes] = []
        self._send(ev.HelloOffered(min_version=PROTOCOL_VERSION, max_version=PROTOCOL_VERSION))
        if login is not None:  # pipelined behind HELLO: no round trip of its own
            self._send(ev.LoginRequested(user=login[0], password=login[1]))

    @property
    def usable(self) -> bool:
        """In step for another request: not broken, nothing half sent or unanswered."""
        conn = self.conn
        return (
            not self._ended
            and conn.broken is None
            and conn.pending_requests == 0
            and conn.request_state in (StreamState.IDLE, StreamState.OPENED)
            and conn.reply_state in (StreamState.IDLE, StreamState.HELLO)
        )

    @property
    def hello_answered(self) -> bool:
        """HELLO_OK has been read: anything the server sends now answers a request
        (or is its last word, before it closes)."""
        return self._hello_answered

    def guarded(self, op: Op[T]) -> Op[T]:
        """``op``, marking the connection ended if it is lost on the way."""
        try:
            return (yield from op)
        except ConnectionFailed:
            self._ended = True
            raise

    def closing_frames(self) -> list[bytes]:
        """Frames still queued when the client closes a connection that is in step:
        the last download's VERIFIED, which waits to go out with the next request
        (protocol.md: a client sends VERIFIED after every END, or never)."""
        if not (self._hello_answered and self.usable):
            return []
        frames, self._queued = self._queued, []
        return frames

    # ---- frames --------------------------------------------------------------------

    def _send(self, event: ev.Event) -> None:
        self._queued.append(self.conn.send(event))
        if trace.ON:
            trace.say(f"tcp: -> {_described(event)}")

    def _writes(self) -> Generator[Effect, object, None]:
        """Hand queued frames to the socket (written before its next read or flush)."""
        for data in self._queued:
            yield Write(data=data)
        self._queued.clear()

    def _next(
        self, sink: Callable[[bytes | memoryview], None] | None = None, *, block: bool = True
    ) -> Generator[Effect, object, ev.Event | ev.ConnectionClosed | None]:
        """The next event (file bytes to ``sink``); None when not blocking and nothing
        has arrived. The first event read is the answer to HELLO, checked here."""
        yield from self._writes()
        while True:
            event = self._decode(self.conn.next_event)
            if isinstance(event, ev.NeedData):
                large = self.conn.in_file
                if not block:
                    data = yield Poll(large=large)
                    if data is None:
                        return None
                else:
                    data = yield from self._read(large)
                assert isinstance(data, memoryview)
                self._decode(self.conn.receive_data, data)
                yield from self._keep_to("in", len(data))
                continue
            if isinstance(event, ev.FileData) and sink is not None:
                try:
                    sink(event.data)
                except FtransferError as exc:
                    raise SinkFailed(exc) from exc
                continue
            if trace.ON:
                trace.say(f"tcp: <- {_described(event)}")
            if not self._hello_answered:
                self._check_hello(event)
                continue
            if self._login_pending:
                self._check_login(event)
                continue
            return event

    def _keep_to(self, way: str, nbytes: int) -> Generator[Effect, object, None]:
        """Charge ``nbytes`` to the rate limit of that way; in debt, wait."""
        limit = self._limits[way]
        if limit is not None and (wait := limit.take(nbytes, time.monotonic())) > 0:
            yield Sleep(seconds=wait)

    def _decode(self, step: Callable[..., T], *args: object) -> T:
        """One step of the core (bytes in, or the next event out). Before the answer
        to HELLO, bytes that break the protocol mean another kind of service."""
        try:
            return step(*args)
        except RemoteProtocolError as exc:
            if self._hello_answered:
                raise
            raise RemoteProtocolError(f"{self.server} does not speak ftransfer: {exc}") from None

    def _read(self, large: bool) -> Generator[Effect, object, object]:
        if self._hello_answered:
            return (yield Read(large=large))
        try:
            return (yield Read(large=large, timeout=self._hello_deadline))
        except ReadTimedOut:
            seconds = self._hello_deadline
            raise RemoteProtocolError(
                f"{self.server} did not answer HELLO within {seconds:.1f} s: "
                "it does not speak ftransfer (or it is stuck)"
            ) from None
        except ConnectionFailed:  # reset: it closed without reading what we sent
            raise self._closed_before_hello() from None

    def _closed_before_hello(self) -> RemoteProtocolError:
        """An ftransfer server answers HELLO (a busy one with an ERROR) before it
        closes; a service that accepts and hangs up without a word is another kind."""
        return RemoteProtocolError(
            f"{self.server} closed the connection without answering HELLO: "
            "it does not speak ftransfer"
        )

    def _check_hello(self, event: ev.Event | ev.ConnectionClosed) -> None:
        if isinstance(event, ev.Failed):
            raise self._error(event)
        if isinstance(event, ev.ConnectionClosed):
            raise self._closed_before_hello()
        assert isinstance(event, ev.HelloAccepted)  # the core allows nothing else
        if event.version != PROTOCOL_VERSION:
            raise UnsupportedVersion(f"{self.server} chose unsupported version {event.version}")
        self._hello_answered = True

    def _check_login(self, event: ev.Event | ev.ConnectionClosed) -> None:
        if isinstance(event, ev.Failed):
            raise self._error(event)
        if not isinstance(event, ev.Done):
            raise ConnectionFailed(f"{self.server} closed the connection after LOGIN")
        self._login_pending = False

    def _error(self, event: ev.Failed) -> FtransferError:
        if event.code in ENDING_CODES:
            self._ended = True  # the server closes after it (ERROR 42 on an idle one)
        return error_from_code(event.code, f"{self.server}: {event.message}")

    def _reply(
        self, sink: Callable[[bytes | memoryview], None] | None = None
    ) -> Generator[Effect, object, ev.Event]:
        event = yield from self._next(sink)
        if event is None or isinstance(event, ev.ConnectionClosed):
            raise ConnectionFailed(f"{self.server} closed the connection")
        return event

    def _expect(self, kind: type[T]) -> Generator[Effect, object, T]:
        event = yield from self._reply()
        if isinstance(event, ev.Failed):
            raise self._error(event)
        if not isinstance(event, kind):
            raise RemoteProtocolError(f"expected {kind.__name__}, got {type(event).__name__}")
        return event

    # ---- requests ------------------------------------------------------------------

    def stat(self, path: str) -> Op[Stat]:
        self._send(ev.StatRequested(path=path))
        reply = yield from self._expect(ev.Stated)
        digest = reply.digest if reply.entry.kind is ev.EntryKind.FILE else None
        return Stat(entry=wire_to_entry(reply.entry), digest=digest)

    def listing(self, path: str) -> Op[list[Entry]]:
        self._send(ev.ListRequested(path=path))
        entries: list[Entry] = []
        while True:
            event = yield from self._reply()
            if isinstance(event, ev.Failed):
                raise self._error(event)
            if isinstance(event, ev.ListEnded):
                return sorted(entries, key=lambda e: e.name)
            assert isinstance(event, ev.Listed)  # the core allows nothing else
            entries.extend(wire_to_entry(e) for e in event.entries)

    def ticket(self) -> Op[ev.TicketIssued]:
        """The keys for one sealed UDP request (TICKET, protocol.md 4.2)."""
        self._send(ev.TicketRequested())
        return (yield from self._expect(ev.TicketIssued))

    def ping(self, seq: int) -> Op[float]:
        """One time-stamped echo (PING, PONG): its round trip in milliseconds."""
        sent = time.perf_counter_ns()
        self._send(ev.PingRequested(seq=seq, timestamp_ns=sent))
        pong = yield from self._expect(ev.Ponged)
        if pong.seq != seq or pong.timestamp_ns != sent:
            raise RemoteProtocolError(f"{self.server} echoed another PING")
        return (time.perf_counter_ns() - sent) / 1e6

    def simple(self, request: ev.Event) -> Op[None]:
        """REMOVE, MKDIR or MOVE: OK or ERROR."""
        self._send(request)
        yield from self._expect(ev.Done)

    def simple_many(self, requests: Sequence[ev.Event]) -> Op[list[FtransferError | None]]:
        """REMOVE, MKDIR or MOVE requests, pipelined: for each, None (OK) or the
        server's refusal, in order."""
        answers = yield from self._pipelined(requests, ev.Done)
        return [answer if isinstance(answer, FtransferError) else None for answer in answers]

    def stat_many(self, paths: Sequence[str]) -> Op[list[Stat | FtransferError]]:
        """STAT each path, pipelined: its Stat or the server's refusal, in order."""
        requests = [ev.StatRequested(path=path) for path in paths]
        answers = yield from self._pipelined(requests, ev.Stated)
        stats: list[Stat | FtransferError] = []
        for answer in answers:
            if isinstance(answer, ev.Stated):
                digest = answer.digest if answer.entry.kind is ev.EntryKind.FILE else None
                stats.append(Stat(entry=wire_to_entry(answer.entry), digest=digest))
            else:
                assert isinstance(answer, FtransferError)
                stats.append(answer)
        return stats

    def _pipelined(
        self, requests: Sequence[ev.Event], kind: type[ev.Event]
    ) -> Op[list[ev.Event | FtransferError]]:
        """Requests with one-frame replies, GET_WINDOW ahead of the reply read:
        each reply of ``kind``, or the server's refusal, in order."""
        answers: list[ev.Event | FtransferError] = []
        sent = 0
        for index in range(len(requests)):
            while sent < len(requests) and sent - index < GET_WINDOW:
                self._send(requests[sent])
                sent += 1
            event = yield from self._reply()
            if isinstance(event, ev.Failed):
                answers.append(self._error(event))
            elif isinstance(event, kind):
                answers.append(event)
            else:
                raise RemoteProtocolError(f"expected {kind.__name__}, got {type(event).__name__}")
        return answers

    def get_many(
        self, jobs: Sequence[DownloadJob], progress: Progress | None
    ) -> Op[list[TransferResult | FtransferError]]:
        """Download (remote, make_sink, local) jobs, pipelined: up to GET_WINDOW
        GETs ahead of the file being read, so N small files cost about one round
        trip. One outcome each, in order, also handed to ``progress``; a refusal or
        a local failure is that file's outcome and the others go on."""
        outcomes = _Outcomes(len(jobs), progress)
        plans: list[DownloadResume | None] = []
        for index, job in enumerate(jobs):
            while len(plans) < len(jobs) and len(plans) - index < GET_WINDOW:
                plans.append(self._get(jobs[len(plans)]))
            outcomes.set(index, (yield from self._download(job, plans[index], progress)))
        return outcomes.done()

    def _get(self, job: DownloadJob) -> DownloadResume | None:
        """Send the GET of ``job`` (GET_AT if a partial of it is here)."""
        plan = None
        if self._resumes is not None and job.target is not None:
            plan = self._resumes.download(job.target, job.remote)
        self._send(
            plan.request(job.remote) if plan is not None else ev.GetRequested(path=job.remote)
        )
        return plan

    def _download(
        self, job: DownloadJob, plan: DownloadResume | None, progress: Progress | None
    ) -> Generator[Effect, object, TransferResult | FtransferError]:
        """One download whose GET is sent: its outcome, with the stream in step."""
        started = time.perf_counter()
        header = yield from self._reply()
        if isinstance(header, ev.Failed):
            return self._error(header)
        if not isinstance(header, ev.FileStarted):
            raise RemoteProtocolError(f"expected FILE, got {type(header).__name__}")
        if header.offset and plan is None:
            raise RemoteProtocolError("FILE_AT in answer to a GET")
        if header.offset is None and plan is not None and plan.known is not None:
            raise RemoteProtocolError("FILE in answer to a GET_AT")
        resume = plan.resume_for(header) if plan is not None else None
        try:
            sink = job.make_sink(header, resume)
        except FtransferError as exc:  # (a local refusal: no-clobber, a directory there)
            yield from self._drop_file()
            return exc
        start = resume.offset if resume is not None else 0
        if progress is not None:
            progress.file_started(job.remote, header.size)
            if start:
                progress.resumed(start)

        def consume(data: bytes | memoryview) -> None:
            sink.write(data)
            if progress is not None:
                progress.advance(len(data))

        try:
            end = yield from self._receive_file(consume)
            self._send(ev.DownloadVerified(digest=sink.digest))
            digest = sink.commit(end.digest)
        except FtransferError as exc:
            if isinstance(exc, ConnectionFailed | ProtocolError | TransferTimeout):
                raise  # (the connection is out of step: the batch cannot go on)
            return exc
        finally:
            sink.abort()
            if progress is not None:
                progress.file_done()
        return TransferResult(
            path=job.remote,
            local=job.local,
            bytes=header.size,
            seconds=time.perf_counter() - started,
            digest=digest,
            transport="tcp",
            resumed_from=start,
        )

    def _drop_file(self) -> Generator[Effect, object, None]:
        """Read and hash a download no sink takes; VERIFIED with what arrived."""
        hasher = new_hasher()
        while True:
            event = yield from self._reply(hasher.update)
            if isinstance(event, ev.FileEnded):
                self._send(ev.DownloadVerified(digest=hasher.digest()))
                return
            if isinstance(event, ev.Failed):  # (ERROR 40 in place of END: no VERIFIED)
                return

    def _receive_file(
        self, consume: Callable[[bytes | memoryview], None]
    ) -> Generator[Effect, object, ev.FileEnded]:
        try:
            event = yield from self._reply(consume)
        except SinkFailed as failed:
            yield from self._drop_rest_of_file()
            raise failed.cause from None
        if isinstance(event, ev.Failed):
            raise self._error(event)
        assert isinstance(event, ev.FileEnded)  # the core allows nothing else mid-file
        return event

    def _drop_rest_of_file(self) -> Generator[Effect, object, None]:
        """Read the rest of a download whose sink failed, keeping the stream in step."""
        while True:
            event = yield from self._reply(lambda data: None)
            if isinstance(event, ev.FileEnded | ev.Failed):
                return

    def put_many(
        self,
        items: Sequence[tuple[str, str]],
        *,
        exclusive: bool,
        progress: Progress | None,
    ) -> Op[list[TransferResult | FtransferError]]:
        """Upload (local path, remote name) pairs, pipelined; one outcome each, also
        handed to ``progress`` as soon as it is known (in order). Each file is open only while
        its frames are written (so any number of files fit under a low descriptor
        limit), and a file that cannot be opened is its own outcome."""
        outcomes = _Outcomes(len(items), progress)
        pending: collections.deque[_Put] = collections.deque()
        self._refused_resumes = []
        records: list[UploadRecord] = []
        try:
            for index, (path, remote) in enumerate(items):
                yield from self._put_item(
                    index, path, remote, pending, outcomes, records, progress, exclusive
                )
            yield Flush()
            while pending:
                yield from self._collect(pending, outcomes, block=True)
            # A refused PUT_AT (the server's partial went, or another holds it) is
            # sent once more from 0, under a new record (protocol.md 5.1.1).
            again, self._refused_resumes = self._refused_resumes, []
            for index in again:
                path, remote = items[index]
                yield from self._put_item(
                    index, path, remote, pending, outcomes, records, progress, exclusive
                )
            yield Flush()
            while pending:
                yield from self._collect(pending, outcomes, block=True)
            for index in self._refused_resumes:  # (refused twice: say so)
                outcomes.set(
                    index,
                    ResumeRefused(f"{items[index][1]}: the server refused a fresh upload's resume"),
                )
        finally:
            for record in records:
                record.close()  # (idempotent: a connection lost mid-batch leaks none)
        return outcomes.done()

    def _put_item(
        self,
        index: int,
        path: str,
        remote: str,
        pending: collections.deque[_Put],
        outcomes: _Outcomes,
        records: list[UploadRecord],
        progress: Progress | None,
        exclusive: bool,
    ) -> Generator[Effect, object, None]:
        try:
            source = LocalFile(path)
        except FtransferError as exc:
            outcomes.set(index, exc)
            return
        with source:  # closed once its END (or ABORT) is written
            put = _Put(index, remote, source, self._record(source, remote))
            if put.record is not None:
                records.append(put.record)
            try:
                yield from self._start_put(put, pending, outcomes, exclusive)
            except FtransferError as exc:
                if isinstance(exc, ConnectionFailed | ProtocolError | TransferTimeout):
                    raise
                outcomes.set(index, exc)  # (its PARTIAL was refused)
                return
            pending.append(put)
            yield from self._send_body(put, pending, outcomes, progress)

    def _record(self, source: LocalFile, remote: str) -> UploadRecord | None:
        return None if self._resumes is None else self._resumes.upload(source, remote)

    def _start_put(
        self, put: _Put, pending: collections.deque[_Put], outcomes: _Outcomes, exclusive: bool
    ) -> Generator[Effect, object, None]:
        """Send the PUT (PUT_AT for a resumable file, after one PARTIAL round trip
        if there is something to resume)."""
        source, record = put.source, put.record
        request = ev.PutRequested(
            path=put.remote,
            size=source.size,
            mtime_ns=source.mtime_ns,
            mode=source.mode,
            exclusive=exclusive,
        )
        if record is not None:
            held = None
            if record.resumable:
                yield from self._writes()
                yield Flush()
                while pending:  # (replies come in order: the ones before PARTIAL_OK first)
                    yield from self._collect(pending, outcomes, block=True)
                self._send(record.partial_request(put.remote, source))
                held = yield from self._expect(ev.PartialHeld)
            put.start, put.hasher = record.start(held, source)
            first = record.first_digest if put.start else ZERO_DIGEST
            request = evolve(
                request, offset=put.start, transfer_id=record.transfer_id, first_digest=first
            )
        self._send(request)

    def _send_body(
        self,
        put: _Put,
        pending: collections.deque[_Put],
        outcomes: _Outcomes,
        progress: Progress | None,
    ) -> Generator[Effect, object, None]:
        if progress is not None:
            progress.file_started(put.remote, put.source.size)
            if put.start:
                progress.resumed(put.start)
        frames = file_frames(
            self.conn,
            put.source,
            self._scratch,
            progress.advance if progress is not None else None,
            cancelled=lambda: put.refused,
            sendfile=not self._copy_files,
            copy=self._copy_files,
            frame_bytes=frame_bytes(self._limits["out"], MAX_FRAME_BYTES),
            start=put.start,
            hasher=put.hasher,
        )
        answer: int | None = None
        try:
            while True:
                op = frames.send(answer)
                yield from self._writes()
                if isinstance(op, SendfileFrame):
                    yield Write(data=self.conn.start_data(op.count))
                    sent = yield Sendfile(fd=op.fd, offset=op.offset, count=op.count)
                    assert isinstance(sent, int)
                    answer = sent
                    yield from self._keep_to("out", op.count)
                elif isinstance(op, CopyFrame):
                    yield Write(data=self.conn.start_data(op.count))
                    copied = yield Copy(
                        fd=op.fd, offset=op.offset, count=op.count, hasher=op.hasher
                    )
                    assert isinstance(copied, int)
                    answer = copied
                    yield from self._keep_to("out", op.count)
                else:
                    yield Write(data=op.data)
                    if op.body:
                        yield Write(data=op.body)
                    answer = None
                    yield from self._keep_to("out", len(op.data) + len(op.body))
                yield from self._collect(pending, outcomes, block=False)
        except StopIteration as stop:
            put.digest = stop.value
        except FileUnreadable as exc:  # its frames are whole: abort the file, keep the batch
            put.failed_here = type(exc)(f"{local_label(put.source.path)}: {exc}")
        finally:
            if progress is not None:
                progress.file_done()
        if put.digest is None:
            self._send(ev.FileAborted())
        else:
            self._send(ev.FileEnded(digest=put.digest))

    def _collect(
        self,
        pending: collections.deque[_Put],
        outcomes: _Outcomes,
        *,
        block: bool,
    ) -> Generator[Effect, object, None]:
        """Take the replies that have arrived (``block``: at least one)."""
        while pending:
            event = yield from self._next(block=block)
            if event is None:
                return
            if isinstance(event, ev.ConnectionClosed):
                raise ConnectionFailed(f"{self.server} closed the connection")
            put = pending.popleft()
            outcome = self._outcome(put, event)
            if outcome is None:
                self._refused_resumes.append(put.index)  # (sent again from 0)
            else:
                outcomes.set(put.index, outcome)
            if block:
                return

    def _outcome(self, put: _Put, event: ev.Event) -> TransferResult | FtransferError | None:
        """The file's outcome; None for a refused resume, which is sent again."""
        outcome = self._put_outcome(put, event)
        if put.record is not None:
            if isinstance(outcome, TransferResult | IntegrityError | ResumeRefused):
                put.record.done()  # (no future: committed, mismatched or refused)
            else:
                put.record.close()  # kept for the next attempt
        if isinstance(outcome, ResumeRefused) and put.start:
            return None
        return outcome

    def _put_outcome(self, put: _Put, event: ev.Event) -> TransferResult | FtransferError:
        if put.failed_here is not None:
            return put.failed_here
        if isinstance(event, ev.Failed):
            put.refused = True
            return self._error(event)
        assert isinstance(event, ev.PutCommitted)  # the core allows nothing else
        if event.digest != put.digest:
            return IntegrityError(f"{put.remote}: the server's digest differs from ours")
        return TransferResult(
            path=put.remote,
            local=put.source.path,
            bytes=put.source.size,
            seconds=time.perf_counter() - put.started,
            digest=event.digest,
            transport="tcp",
            resumed_from=put.start,
        )


def _described(event: ev.Event | ev.ConnectionClosed) -> str:
    """A frame for the trace: its kind and the names in it, never a secret (a
    LOGIN shows its user, a ticket its id)."""
    if isinstance(event, ev.LoginRequested):
        return f"LoginRequested user {escape(event.user)}"
    if isinstance(event, ev.TicketIssued):
        return f"TicketIssued {event.ticket:#x}, {event.lifetime_s} s"
    name = type(event).__name__
    named = [
        f"{field} {escape(str(getattr(event, field)))}"
        for field in ("path", "source", "target")
        if hasattr(event, field)
    ]
    if isinstance(event, ev.Failed):
        named.append(f"code {event.code}: {escape(event.message)}")
    if isinstance(event, ev.FileStarted | ev.PutRequested):
        named.append(f"{event.size} bytes")
    return " ".join([name, *named])
