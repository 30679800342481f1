"""The client's UDP side: one request per call, over a connected UDP socket.

Theory of operation
-------------------
``udp_request`` builds a ``ClientRequest`` (handshake, then a Session), attaches a
``DatagramPump`` and runs until the request ends. Data received is verified and
committed exactly as on TCP: a download goes through ``open_local_writer`` (temp
file, xxh3-128 check against the server's FIN, rename), and the verdict is sent
back as the RESULT. Failures map to the same error tree: a refusal to its code's
class, silence past ``give_up_s`` to ``TransferTimeout``.

``UdpStats`` carries what a user of a lossy link wants to see afterwards:
goodput, datagrams sent and retransmitted, duplicates and corrupt datagrams
dropped, smoothed RTT, and the loss estimate: retransmitted / sent when this side
sends the data, the share of the server's transmission numbers that never arrived
when it receives.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .client import MemorySink, Progress, Sink, StdoutSink, TransferResult, open_local_file
from .errors import FtransferError, TransferTimeout, error_from_code
from .io.datagram import DatagramPump, open_udp_socket
from .proto.udp.handshake import Accepted, ClientRequest, HandshakeTimedOut, Refused
from .proto.udp.packets import DEFAULT_CHUNK_BYTES, Operation
from .proto.udp.session import DataArrived, FinArrived, Finished, SessionConfig, TimedOut
from .storage import BlockReader, open_local_writer

CLIENT_WINDOW_CHUNKS = 8192
"""Reorder window the client offers (bounded in bytes by the server's choice)."""


@dataclass(frozen=True, kw_only=True)
class UdpOptions:
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    give_up_s: float = 30.0
    cc: str = "bbr"


@dataclass(frozen=True, kw_only=True)
class UdpStats:
    seconds: float
    bytes: int
    datagrams_sent: int
    datagrams_received: int
    retransmitted: int
    duplicates: int
    corrupt: int
    srtt_ms: float | None
    loss_estimate: float

    @property
    def goodput(self) -> float:
        """Bytes per second of verified payload."""
        return self.bytes / max(self.seconds, 1e-9)


@dataclass
class UdpOutcome:
    accepted: Accepted | None
    code: int
    message: str
    data: bytes
    digest: bytes
    stats: UdpStats


class _Run:
    """One request's event handling; the pump calls back into it."""

    def __init__(
        self,
        request: ClientRequest,
        sink: Callable[[Accepted], Sink] | None,
        progress: Progress | None,
        name: str,
    ) -> None:
        self.request, self._make_sink, self.progress, self.name = request, sink, progress, name
        self.sink: Sink | None = None
        self.accepted: Accepted | None = None
        self.result: tuple[int, str, bytes] | None = None
        self.error: FtransferError | None = None
        self.done = asyncio.get_running_loop().create_future()
        self._reported = 0

    def step(self, now: float) -> None:
        for event in self.request.events:
            self._handshake_event(event)
        self.request.events.clear()
        session = self.request.session
        if session is not None:
            for session_event in session.events:
                self._session_event(session_event, now)
            session.events.clear()
            self._report_sent()
        if (self.result is not None or self.error is not None) and not self.done.done():
            self.done.set_result(None)

    def _handshake_event(self, event: Accepted | Refused | HandshakeTimedOut) -> None:
        if isinstance(event, Refused):
            self.result = (event.code, event.message, b"")
        elif isinstance(event, HandshakeTimedOut):
            self.error = TransferTimeout("no answer from the server over UDP")
        else:
            self.accepted = event
            if self._make_sink is not None:
                self.sink = self._make_sink(event)
            if self.progress is not None:
                self.progress.file_started(self.name, event.size or self.request.size)

    def _session_event(self, event: object, now: float) -> None:
        session = self.request.session
        assert session is not None
        if isinstance(event, DataArrived):
            self._consume(memoryview(event.data))  # one write per batch, not per datagram
        elif isinstance(event, FinArrived):
            code, message, digest = self._verify(event)
            session.finish(code=code, message=message, digest=digest, now=now)
        elif isinstance(event, Finished):
            self.result = (event.code, event.message, event.digest)
        elif isinstance(event, TimedOut):
            self.error = TransferTimeout(
                f"no progress for {session.config.give_up_s:g} s: the server or the path is gone"
            )

    def _consume(self, chunk: memoryview) -> None:
        if self.sink is not None:
            self.sink.write(chunk)
        if self.progress is not None:
            self.progress.advance(len(chunk))

    def _verify(self, event: FinArrived) -> tuple[int, str, bytes]:
        """The verdict for the RESULT: every sink checks the FIN's digest on commit
        (the session has already checked every chunk's length and the total size)."""
        assert self.sink is not None  # a data receiver always has one
        try:
            return 0, "", self.sink.commit(event.digest)
        except FtransferError as exc:
            self.error = exc
            return exc.code, str(exc), self.sink.digest

    def _report_sent(self) -> None:
        session = self.request.session
        if self.progress is None or session is None or session.sender is None:
            return
        sent = session.hashed_bytes
        if sent > self._reported:
            self.progress.advance(sent - self._reported)
            self._reported = sent


async def udp_request(
    host: str,
    port: int,
    operation: Operation,
    path: str,
    *,
    options: UdpOptions,
    local: Path | None = None,
    target: Path | int | None = None,
    progress: Progress | None = None,
) -> UdpOutcome:
    """Run one request. PUT sends ``local``; what the server sends goes to ``target``:
    a path (written atomically), a descriptor (streamed), or None (kept in memory)."""
    fd, size, mtime_ns = -1, 0, -1
    if operation is Operation.PUT:
        assert local is not None
        fd, st = open_local_file(local)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    try:
        return await _run(
            host, port, operation, path, options, fd, size, mtime_ns, target, progress
        )
    finally:
        if fd >= 0:
            os.close(fd)


async def _run(
    host: str,
    port: int,
    operation: Operation,
    path: str,
    options: UdpOptions,
    fd: int,
    size: int,
    mtime_ns: int,
    target: Path | int | None,
    progress: Progress | None,
) -> UdpOutcome:
    loop = asyncio.get_running_loop()
    config = SessionConfig(
        chunk_bytes=options.chunk_bytes,
        window=CLIENT_WINDOW_CHUNKS,
        give_up_s=options.give_up_s,
        cc=options.cc,
    )
    request = ClientRequest(
        operation=operation,
        path=path,
        size=size,
        mtime_ns=mtime_ns,
        config=config,
        rng=random.SystemRandom(),
        now=loop.time(),
        read_chunk=BlockReader(fd) if fd >= 0 else None,
    )

    def make_sink(accepted: Accepted) -> Sink:
        if isinstance(target, Path):
            return open_local_writer(target, size=accepted.size, mtime_ns=accepted.mtime_ns)
        return StdoutSink(target) if target is not None else MemorySink()

    sink = (
        make_sink if operation is not Operation.PUT and operation is not Operation.REMOVE else None
    )
    run = _Run(request, sink, progress, path)
    sock = open_udp_socket(host, port, connect=True)
    started = time.perf_counter()

    def pump_step() -> None:
        run.step(loop.time())  # first: the verdict's RESULT leaves in the same batch
        pump.send_many(request.datagrams(loop.time()))
        pump.arm(request.get_timer())

    def on_timer() -> None:
        request.handle_timer(loop.time())
        pump_step()

    pump = DatagramPump(
        sock, lambda view, _addr: request.receive(view, loop.time()), pump_step, on_timer
    )
    try:
        pump_step()
        await run.done
    finally:
        if run.sink is not None:
            run.sink.abort()  # after a commit this only releases; otherwise it discards
        if progress is not None and run.accepted is not None:
            progress.file_done()
        pump.close()
    return _outcome(run, request, time.perf_counter() - started)


def _outcome(run: _Run, request: ClientRequest, seconds: float) -> UdpOutcome:
    if run.error is not None:
        raise run.error
    assert run.result is not None
    code, message, digest = run.result
    if code:
        raise error_from_code(code, message)
    data = bytes(run.sink.data) if isinstance(run.sink, MemorySink) else b""
    return UdpOutcome(
        accepted=run.accepted,
        code=code,
        message=message,
        data=data,
        digest=digest,
        stats=_stats(request, seconds),
    )


def _stats(request: ClientRequest, seconds: float) -> UdpStats:
    session = request.session
    sent = received = retransmitted = duplicates = 0
    corrupt = request.corrupt  # every datagram is decoded by the request first
    size = 0
    srtt = None
    loss = 0.0
    if session is not None:
        size = session.size
        srtt = session.rtt.srtt
        if session.sender is not None:
            sent, retransmitted = session.sender.stats.sent, session.sender.stats.retransmitted
            loss = retransmitted / sent if sent else 0.0
        if session.receiver is not None:
            duplicates = session.receiver.stats.duplicates
            received = session.receiver.stats.received + duplicates
            loss = session.receiver.loss_estimate()
    return UdpStats(
        seconds=seconds,
        bytes=size,
        datagrams_sent=sent,
        datagrams_received=received,
        retransmitted=retransmitted,
        duplicates=duplicates,
        corrupt=corrupt,
        srtt_ms=None if srtt is None else srtt * 1000,
        loss_estimate=loss,
    )


def as_transfer_result(outcome: UdpOutcome, remote: str, local: str) -> TransferResult:
    return TransferResult(
        remote=remote,
        local=local,
        size=outcome.stats.bytes,
        seconds=outcome.stats.seconds,
        digest=outcome.digest,
    )
