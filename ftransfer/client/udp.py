"""The client's UDP side: one request per call, over a connected UDP socket.

Theory of operation
-------------------
``UdpCall`` is one request's application: it builds the ``ClientRequest`` core
(proto/udp/handshake.py) and handles its events, and the same object runs under
the blocking runner (io/threaded.py, for ``Client``: GSO and GRO, no asyncio) or
the asyncio driver (io/datagram.py, for ``AsyncClient``). Data received is verified
and committed exactly as over TCP: a download goes to a sink (client/local.py)
made when the ACCEPT says what comes, written as it arrives, committed only if the
server's FIN digest matches; the verdict goes back in the RESULT with the digest
this side computed. Failures map to the same error tree: a refusal to its code's
class, silence past the give-up time to ``TransferTimeout``, an ICMP "port
unreachable" before the server ever answered to ``ConnectionFailed`` at once
(nothing listens there), and an interrupted request (Ctrl-C, SIGTERM,
cancellation) tells the server with CLOSE so it frees the session at once (the
blocking flavour repeats it twice within 0.2 s, past a bottleneck queue full of
our own data). An answer kept in memory (LIST, STAT) is capped at the server's
own MAX_ANSWER_BYTES: an ACCEPT announcing more, or more bytes than announced,
is a ``RemoteProtocolError`` and the request is closed, so a hostile server
cannot make the client hold what it likes.

``TransferStats`` carries what a user of a lossy link wants to see afterwards:
datagrams sent and retransmitted, duplicates and corrupt datagrams dropped, the
smoothed RTT, and the loss estimate: retransmitted / sent when this side sends the
data, the share of the server's transmission numbers that never arrived when it
receives.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from ..config import ClientConfig
from ..errors import (
    Aborted,
    ConnectionFailed,
    FtransferError,
    IntegrityError,
    RemoteProtocolError,
    error_from_code,
)
from ..io import threaded
from ..io.udp import DatagramSocket, UdpSocket, open_udp_socket
from ..proto.events import Accepted, Completed, DataReceived, EndReceived, Failed
from ..proto.ratelimit import Limits
from ..proto.udp.handshake import ClientRequest
from ..proto.udp.packets import Operation
from ..proto.udp.session import BlockReader, SessionConfig
from ..storage.names import escape
from . import trace
from .local import LocalFile, MemorySink, Sink
from .result import Progress, TransferResult, TransferStats
from .urls import Url

CLIENT_WINDOW_CHUNKS = 8192
"""Reorder window the client offers (bounded in bytes by the server's choice)."""
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""Largest LIST or STAT answer the client keeps in memory: the server's own cap
(server/udp.py), past which it refuses a listing and says to use TCP."""
MakeSink = Callable[[Accepted], Sink]
ResumeSink = Callable[[Accepted, "Resume | None"], Sink]
"""A download's sink, written as a partial (``Resume``) or not."""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..proto.machine import DatagramCore
    from ..proto.udp.handshake import ResumePlan
    from ..proto.udp.sealed import ClientSeal, Ticket
    from ..storage.partial import Resume
    from .resume import DownloadResume, Resumes, UploadPlan


LINGER_RTOS = 4.0
"""After a download's RESULT the client stays (its session lingers) until the
server's CLOSE, or for this many retransmission timeouts: long enough to answer the
FIN the server repeats when that RESULT was lost. Without it a lost RESULT left the
server repeating FIN to no one and logging a verified download as failed after its
give-up time (seen through the emulated WAN at 10 % loss). With the CLOSE, the wait
is one round trip."""


class UdpCall:
    """One UDP request and what becomes of it."""

    def __init__(
        self,
        url: Url,
        config: ClientConfig,
        operation: Operation,
        path: str,
        *,
        now: float,
        source: LocalFile | None = None,
        make_sink: MakeSink | None = None,
        progress: Progress | None = None,
        exclusive: bool = False,
        parents: bool = False,
        ticket: Ticket | None = None,
        limits: tuple[Limits | None, Limits | None] = (None, None),
        resumes: Resumes | None = None,
        target: str | None = None,
        resume_sink: ResumeSink | None = None,
    ) -> None:
        """``ticket``: the keys (over TLS) that seal every datagram; None: plaintext
        (``--insecure``). ``resumes``: an upload, or a download to the file
        ``target`` (its sink made by ``resume_sink``), resumes what an interrupted
        one left (client/resume.py)."""
        self.url, self.path, self.progress = url, path, progress
        self._upload: UploadPlan | None = None
        self._download: DownloadResume | None = None
        self._resume_sink = resume_sink
        plan: ResumePlan | None = None
        request_size = source.size if source is not None else int(parents)
        request_mtime = source.mtime_ns if source is not None else -1
        if resumes is not None and source is not None and operation is Operation.PUT:
            from .resume import UploadPlan

            record = resumes.upload(source, path)
            if record is not None:
                plan = self._upload = UploadPlan(record, source)
        elif resumes is not None and target is not None and resume_sink is not None:
            self._download = resumes.download(target, path)
            if self._download.known is not None:  # a partial of it is here
                plan = self._download
                request_size, request_mtime = self._download.known
        self._inbound = limits[1]
        """The client's receiving bucket, shared by the command's requests: a
        download's bytes are charged to it, and the next request waits out its
        debt (the server paces each session; this paces the sequence of them)."""
        self._make_sink = make_sink
        self.sink: Sink | None = None
        self.accepted: Accepted | None = None
        self.result: Completed | Failed | None = None
        self.error: FtransferError | None = None
        self._reported = 0
        self._clock_start = time.perf_counter()
        session = SessionConfig(
            chunk_bytes=config.udp_chunk_bytes,
            window=CLIENT_WINDOW_CHUNKS,
            give_up_s=config.udp_give_up_s,
            cc=config.udp_cc,
            linger_rtos=LINGER_RTOS,
        )
        self.request = ClientRequest(
            operation=operation,
            path=path,
            size=request_size,
            mtime_ns=request_mtime,
            mode=source.mode if source is not None else None,
            exclusive=exclusive,
            max_rate=config.limit_rate,
            limits=limits[0],
            config=session,
            rng=random.SystemRandom(),
            now=now,
            server=(url.host, url.port),
            read_chunk=BlockReader(self._reading(source)) if source is not None else None,
            resume=plan,
        )
        self.seal: ClientSeal | None = None
        self.core: DatagramCore = self.request
        if ticket is not None:
            from ..proto.udp.sealed import ClientSeal

            self.seal = ClientSeal(self.request, ticket)
            self.core = self.seal
        self._announced = False
        if trace.ON:
            how = f"sealed, ticket {ticket.ticket:#x}" if ticket is not None else "plaintext"
            trace.say(
                f"udp: -> {operation.name} {escape(path)} to {url.address} ({how}), "
                f"chunk {config.udp_chunk_bytes}, window {CLIENT_WINDOW_CHUNKS}"
            )
        if source is not None and progress is not None:  # before the first datagram
            progress.file_started(path, source.size)
            self._announced = True

    @property
    def over(self) -> bool:
        return self.result is not None or self.error is not None

    def unreachable(self) -> None:
        """ICMP port unreachable: fatal only before the server ever answered."""
        if not self.request.heard and self.error is None:
            self.error = ConnectionFailed(
                f"udp {self.url.address}: port unreachable (no ftransfer UDP service there)"
            )

    def on_event(self, event: object) -> None:
        if self.error is not None and isinstance(event, DataReceived | EndReceived):
            return  # the request failed here: nothing more is kept or verified
        if isinstance(event, Accepted):
            if trace.ON:
                session = self.request.session
                number = session.session_id if session is not None else 0
                trace.say(
                    f"udp: <- accepted, session {number:#x}, chunk {event.chunk_bytes}, "
                    f"{event.size} bytes"
                )
            self._accepted(event)
        elif isinstance(event, DataReceived):
            self._consume(event.data)
        elif isinstance(event, EndReceived):
            self._verify(event)
        elif isinstance(event, Completed | Failed):
            self.result = event
            if trace.ON:
                ended = "completed" if isinstance(event, Completed) else f"failed {event.code}"
                s = self.stats()
                trace.say(
                    f"udp: <- {ended}: {s.datagrams_sent} sent, {s.datagrams_received} received, "
                    f"{s.retransmitted} retransmitted, srtt {s.srtt_ms or 0:.1f} ms, "
                    f"loss {s.loss_estimate or 0:.1%}"
                )
        self._report_sent()

    def _reading(self, source: LocalFile) -> Callable[[int, int], bytes]:
        """The file's reads, which move an upload's progress as the sender takes new
        bytes (a block at a time), not only when the transfer ends."""

        def read(offset: int, n: int) -> bytes:
            data = source.read(offset, n)
            self._advance_to(offset + len(data))
            return data

        return read

    def _advance_to(self, position: int) -> None:
        if self.progress is not None and position > self._reported:
            self.progress.advance(position - self._reported)
            self._reported = position

    def _accepted(self, event: Accepted) -> None:
        self.accepted = event
        if self._download is not None and self._resume_sink is not None:
            try:
                resume = self._download.resume_at(event.size, event.mtime_ns, event.offset)
                self.sink = self._resume_sink(event, resume)
            except FtransferError as exc:
                self.error = exc
                self.request.abort(code=exc.code or Aborted.code, message=str(exc))
                return
        elif self._make_sink is not None:
            self.sink = self._make_sink(event)
        if event.offset:
            self._reported = event.offset  # (the bytes before were already there)
        if isinstance(self.sink, MemorySink) and event.size > MAX_ANSWER_BYTES:
            self._hostile(f"an answer of {event.size} bytes announced")
        if self.progress is not None and not self._announced:
            self.progress.file_started(self.path, event.size)
            self._announced = True
        if self.progress is not None and event.offset:
            self.progress.resumed(event.offset)

    def _consume(self, data: bytes | bytearray) -> None:
        if isinstance(self.sink, MemorySink):
            assert self.accepted is not None  # data follows an ACCEPT
            if len(self.sink.data) + len(data) > self.accepted.size:
                self._hostile(f"more than the {self.accepted.size} bytes announced")
                return
        if self.sink is not None:
            self.sink.write(data)  # one write per batch of datagrams
        if self.progress is not None:
            self.progress.advance(len(data))

    def _hostile(self, what: str) -> None:
        """A LIST or STAT answer past its bounds: refuse it and close the request."""
        if self.error is not None:
            return
        self.error = RemoteProtocolError(
            f"udp {self.url.address}: {what} (a LIST or STAT answer is at most "
            f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB)"
        )
        self.request.abort(code=RemoteProtocolError.code, message=str(self.error))

    def _verify(self, event: EndReceived) -> None:
        """The verdict for the RESULT: the sink checks the FIN's digest on commit
        (the session has checked every chunk's length and the total size)."""
        assert self.sink is not None  # a data receiver always has one
        now = time.monotonic()
        try:
            digest = self.sink.commit(event.digest)
        except FtransferError as exc:
            self.error = exc
            self.request.finish(code=exc.code, message=str(exc), digest=self.sink.digest, now=now)
            return
        self.request.finish(code=0, message="", digest=digest, now=now)

    def _report_sent(self) -> None:
        session = self.request.session
        if self.progress is not None and session is not None and session.sender is not None:
            start = self.accepted.offset if self.accepted is not None else 0
            self._advance_to(start + session.hashed_bytes)

    def interrupted(self) -> None:
        """Tell the server the request is abandoned (CLOSE), if it is running."""
        if not self.over:
            self.request.abort(code=Aborted.code, message="interrupted by the client")

    def delay(self) -> float:
        """Seconds to wait before this request starts (the command's rate limit)."""
        return 0.0 if self._inbound is None else self._inbound.wait(time.monotonic())

    def finish(self) -> None:
        """Release the sink (after a commit this only closes) and the progress bar."""
        if self._inbound is not None:
            received = self.request.session.size if self.request.session is not None else 0
            self._inbound.take(received if self.sink is not None else 0, time.monotonic())
        if self.sink is not None:
            self.sink.abort()
        if self._upload is not None:
            self._upload.record.close()  # (kept for a resume, unless done)
        if self.progress is not None and self._announced:
            self.progress.file_done()

    def outcome(self, local: str) -> TransferResult:
        """The result, or the error that ended the request."""
        if self.error is not None:
            self._record_done(self.error)
            raise self.error
        result = self.result
        assert result is not None
        if isinstance(result, Failed):
            error = error_from_code(result.code, f"{self.url.address}: {result.message}")
            self._record_done(error)
            raise error
        session = self.request.session
        start = self.accepted.offset if self.accepted is not None else 0
        self._record_done(None)
        return TransferResult(
            path=self.path,
            local=local,
            bytes=(session.size if session is not None else 0) + start,
            seconds=time.perf_counter() - self._clock_start,
            digest=result.digest,
            transport="udp",
            stats=self.stats(),
            resumed_from=start,
        )

    def _record_done(self, error: FtransferError | None) -> None:
        """An upload's record goes once it committed (or failed verification: the
        server removed its partial too); else it stays for the next attempt."""
        if self._upload is not None and (error is None or isinstance(error, IntegrityError)):
            self._upload.record.done()

    def answer(self) -> bytes:
        """What a LIST or STAT received (checked against its digest)."""
        self.outcome("")
        return bytes(self.sink.data) if isinstance(self.sink, MemorySink) else b""

    def stats(self) -> TransferStats:
        core, session = self.request, self.request.session
        rejected = self.seal.stats.dropped if self.seal is not None else 0
        if session is None:
            return TransferStats(
                corrupt_dropped=core.corrupt, rejected=rejected, sealed=self.seal is not None
            )
        srtt = session.rtt.srtt
        srtt_ms = None if srtt is None else srtt * 1000
        chunk = session.config.chunk_bytes
        sender, receiver = session.sender, session.receiver
        if sender is not None:
            sent, again = sender.stats.sent, sender.stats.retransmitted
            return TransferStats(
                datagrams_sent=sent,
                retransmitted=again,
                corrupt_dropped=core.corrupt,
                rejected=rejected,
                sealed=self.seal is not None,
                srtt_ms=srtt_ms,
                loss_estimate=again / sent if sent else 0.0,
                chunk_bytes=chunk,
                acks_received=sender.stats.acks,
            )
        assert receiver is not None
        duplicates = receiver.stats.duplicates
        return TransferStats(
            datagrams_received=receiver.stats.received + duplicates,
            duplicates=duplicates,
            corrupt_dropped=core.corrupt,
            rejected=rejected,
            sealed=self.seal is not None,
            srtt_ms=srtt_ms,
            loss_estimate=receiver.loss_estimate(),
            chunk_bytes=chunk,
        )


def connected_socket(url: Url) -> UdpSocket:
    return open_udp_socket(url.host, url.port, connect=True)


CLOSE_REPEATS_AFTER_S = (0.05, 0.2)
"""An abandoned request's CLOSE goes out at once and again after these delays (so
the client lingers 0.2 s at most). Nothing acknowledges a CLOSE, and one that is
lost leaves the server holding the session and its temporary until its give-up
time: the UDP mode is for lossy links (through the relay at 30 % loss one CLOSE
reached the server 7 times in 10, three copies 10 in 10), and a queue full of
our own upload drops what is sent into it, while a copy sent once it has drained
(tens of ms) gets through. A repeated CLOSE for an ended session is dropped."""


def tell_server(
    sock: UdpSocket, queued: Callable[[float], list[tuple[bytes, tuple[str, int]]]]
) -> None:
    """Send what the core queued after an interruption (``queued``: its
    datagrams_to_send; a CLOSE, if a session was open), and repeat it on the
    CLOSE_REPEATS_AFTER_S schedule."""
    dsock = DatagramSocket(sock)
    started = time.monotonic()
    datagrams = queued(started)
    if not datagrams:
        return  # no session yet: the server holds nothing for us
    dsock.send(datagrams)
    for delay in CLOSE_REPEATS_AFTER_S:
        time.sleep(max(0.0, started + delay - time.monotonic()))
        dsock.send(datagrams)


def run_sync(call: UdpCall) -> None:
    """Run the request on a blocking socket in this thread (``Client``)."""
    if (wait := call.delay()) > 0:
        time.sleep(wait)
    sock = connected_socket(url=call.url)
    try:
        threaded.run(
            sock,
            call.core,
            call.on_event,
            finished=lambda: call.over and call.request.finished,
            batch=True,
            on_unreachable=call.unreachable,
            stop=lambda: call.error is not None,
        )
    except BaseException:
        call.interrupted()
        tell_server(sock, call.core.datagrams_to_send)
        raise
    finally:
        call.finish()
        sock.close()


async def run_async(call: UdpCall) -> None:
    """Run the request on the asyncio loop (``AsyncClient``)."""
    from .datagram import run_on_loop

    if (wait := call.delay()) > 0:
        import asyncio

        await asyncio.sleep(wait)
    await run_on_loop(call, connected_socket(call.url))
