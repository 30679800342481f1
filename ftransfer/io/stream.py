"""asyncio adapter for the TCP core: moves bytes, decides nothing.

Theory of operation
-------------------
``FrameStream`` is an ``asyncio.BufferedProtocol``: the kernel copies received bytes
straight into a reused buffer (``recv_into``), and each read is handed to the
sans-IO ``Connection``. Because ``FileData`` events are views into that buffer,
reading is paused until the consumer has drained the core (``next_event`` returned
NEED_DATA); then reading resumes. That pause is also the receive-side backpressure:
a consumer that does not keep up stops the socket being read, and TCP flow control
slows the peer. While a file streams in, a *data sink* (``set_data_sink``) takes
the bytes inside the protocol callback itself: no pause and no task switch per read.
The buffer is small between files (mapped at the first read, unmapped when the
connection is lost) and a large one borrowed from a pool while a file's bytes
arrive (buffers.py: memory bounded by what is open and streaming now).

Sending: frames are *corked*: queued, and handed to the transport in one write at
the end of the current event-loop iteration (a ``call_soon`` scheduled by the first
queued frame), or earlier before a sendfile, on ``drain`` once CORK_BYTES are
queued, and on close. Everything the server answers to one read of pipelined
requests costs one send syscall, and no frame waits longer than one iteration.
File bodies (``send_file``) follow files.py: ``loop.sendfile`` (zero copy) when
the source has a descriptor, else DATA frames read from it, hashed as they go
unless the source knows its digest; a source shorter than announced raises
``FileChanged`` after its frame is completed, and one that cannot be read
(files.py, or a sendfile that fails on the file's side: the position it leaves
says how much of the frame went out, the rest is sent as zeros)
``FileUnreadable``, and ERROR goes in place of END.

Idle timeout: one watchdog timer per connection. Receiving bytes, or handing bytes
to the transport, records the time; the timer re-arms itself for the remaining
interval and, once nothing moved for ``idle_timeout_s``, marks the stream timed
out and wakes whoever waits: they raise ``TransferTimeout``, and the server ends
the connection with ERROR 42 (``close_with_error``) where no frame is half
written. A sendfile moves bytes the stream does not see until its frame is done,
so a frame must be sent within the interval; if the timer fires while one is
half written, no ERROR can follow it: the sendfile is cancelled and the
connection aborted at once (a client that stops reading a download cannot hold
its session). A close that cannot flush (a peer that does not read) becomes an
abort after CLOSE_GRACE_S.

OS errors are mapped to ``ConnectionFailed`` (or ``TransferTimeout`` after the
watchdog fired) here, once, where they surface.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
from collections.abc import Callable

from ..checksum import Hasher
from ..config import CORK_BYTES, MAX_FRAME_BYTES, WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES
from ..errors import ConnectionFailed, FtransferError, TransferTimeout
from ..proto.ratelimit import Limits, frame_bytes
from ..proto.tcp import events as ev
from ..proto.tcp.connection import Connection
from .buffers import SMALL_BUFFER_BYTES, BufferPool, MappedBuffer
from .files import (
    DataSink,
    SendfileFrame,
    SinkFailed,
    WriteFrame,
    file_frames,
    new_scratch,
    unreadable,
)
from .tls import ASYNCIO_TLS_FILE_READ_BYTES, ASYNCIO_TLS_READ_BYTES, set_read_bytes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from io import FileIO

    from .files import FileSource

Progress = Callable[[int], None]
"""Called with the number of bytes just sent or received."""
LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close() resets the connection and drops the send queue."""
TLS_WRITE_HIGH_WATER_BYTES, TLS_WRITE_LOW_WATER_BYTES = 1 << 20, 256 << 10
"""Backpressure marks over TLS: a DATA frame read for TLS is 1 MiB (files.py)."""
CLOSE_GRACE_S = 2.0
"""A close whose queued bytes the peer does not read within this becomes an abort."""


_SOCKET_ERRNOS = frozenset(
    (errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN)
)


def _socket_side(exc: OSError) -> bool:
    """Whether a failed sendfile failed on the connection (else on the file)."""
    return isinstance(exc, ConnectionError) or exc.errno in _SOCKET_ERRNOS


def _sent_before(file: FileIO, offset: int, count: int) -> int:
    """Bytes of the frame a failed ``loop.sendfile`` sent: it leaves the file's
    position after them, even when it raises (asyncio's documentation)."""
    try:
        return min(max(file.tell() - offset, 0), count)
    except OSError:
        return 0


def coalesced(parts: list[bytes]) -> list[bytes]:
    """``parts`` as few writes: neighbours shorter than CORK_BYTES joined, longer ones
    (a DATA frame's bytes) as they are. Over TLS each write is a record or more,
    encrypted straight from it: a join would copy 1 MiB frames first, and writing
    small frames one by one would make a record of each."""
    out: list[bytes] = []
    small: list[bytes] = []
    for part in parts:
        if len(part) < CORK_BYTES:
            small.append(part)
            continue
        if small:
            out.append(b"".join(small) if len(small) > 1 else small[0])
            small = []
        out.append(part)
    if small:
        out.append(b"".join(small) if len(small) > 1 else small[0])
    return out


class FrameStream(asyncio.BufferedProtocol):
    """One TCP connection: a sans-IO ``Connection`` plus a transport."""

    def __init__(
        self,
        conn: Connection,
        pool: BufferPool,
        idle_timeout_s: float,
        on_lost: Callable[[], object] | None = None,
    ) -> None:
        self.conn, self._pool = conn, pool
        self._on_lost = on_lost
        self._idle_s = idle_timeout_s
        self._active_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False
        self._sink: DataSink | None = None
        self._cork: list[bytes] = []
        self._corked = 0
        self._flush_scheduled = False
        self._mid_frame = False
        self._sending: asyncio.Task[int] | None = None
        self._stash: ev.Event | ev.NeedData | ev.ConnectionClosed | FtransferError | None = None
        self._scratch: bytearray | None = None
        self._small: MappedBuffer | None = None
        self._large: MappedBuffer | None = None
        self._view = memoryview(b"")
        self._transport: asyncio.Transport | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._tls = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._connected = asyncio.Event()
        self._lost: Exception | None = None
        self._closed = False
        self._eof_fed = False
        self._undrained = False
        """Bytes were handed to the core that it has not all turned into events."""
        self.send_limits: Limits | None = None
        """Rate limits ``send_file`` keeps to (proto/ratelimit.py)."""
        self.receive_limits: Limits | None = None
        """Rate limits reading keeps to: over them, reading pauses until the debt
        is repaid, and TCP's flow control slows the peer."""
        self._throttle: asyncio.TimerHandle | None = None
        self._eof_waiting = False
        self.peer: tuple[str, int] = ("", 0)

    # ---- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._tls = transport.get_extra_info("sslcontext") is not None
        if self._tls:  # each plaintext byte queued is also held once encrypted
            transport.set_write_buffer_limits(TLS_WRITE_HIGH_WATER_BYTES, TLS_WRITE_LOW_WATER_BYTES)
        else:
            transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
        self._loop = asyncio.get_running_loop()
        self._touch()
        self._watchdog = self._loop.call_later(self._idle_s, self._check_idle)
        self._connected.set()

    def _touch(self) -> None:
        """Record progress: bytes received, or bytes accepted for sending."""
        self._active_at = self._loop.time()

    def _check_idle(self) -> None:
        idle_for = self._loop.time() - self._active_at
        if idle_for >= self._idle_s:
            self._timed_out = True
            if self._mid_frame:
                self._abort_mid_frame()
            self._readable.set()
            self._writable.set()
        else:
            self._watchdog = self._loop.call_later(self._idle_s - idle_for, self._check_idle)

    def _abort_mid_frame(self) -> None:
        """Timed out inside a sendfile: no ERROR can follow a half-written frame
        (protocol.md 2.1), and the sendfile waits on a peer that does not read, so
        stop it and drop the connection now."""
        if self._sending is not None:
            self._sending.cancel()  # first: its writer is removed before the socket closes
        self.abort()

    def _gone(self) -> FtransferError:
        """The error for using a connection that has ended (or timed out)."""
        if self._timed_out:
            return TransferTimeout(
                f"no progress for {self._idle_s:g} s: the peer stopped answering"
            )
        return ConnectionFailed(f"connection lost: {self._lost or 'closed by peer'}")

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.conn.in_file:
            if self._large is None:
                self._large = self._pool.take()
                if self._tls:  # larger socket reads too (io/tls.py: set_read_bytes)
                    set_read_bytes(self._transport, ASYNCIO_TLS_FILE_READ_BYTES)
            self._view = self._large.view
        else:
            if self._large is not None and self._tls:
                set_read_bytes(self._transport, ASYNCIO_TLS_READ_BYTES)
            self._return_large()
            if self._small is None:  # on the first read: a socket that sends nothing costs none
                self._small = MappedBuffer(SMALL_BUFFER_BYTES)
            self._view = self._small.view
        return self._view

    def _return_large(self) -> None:
        if self._large is not None:
            self._pool.give(self._large)
            self._large = None

    def buffer_updated(self, nbytes: int) -> None:
        assert self._transport is not None
        self._touch()
        self.conn.receive_data(self._view[:nbytes])
        if self.receive_limits is not None:
            self._limit_reading(nbytes)
        if self._sink is not None:
            try:
                self._stash = self._poll()
            except FtransferError as exc:
                self._stash = exc
            if isinstance(self._stash, ev.NeedData):
                self._stash = None
                return  # the sink took everything: keep reading, nobody to wake
        self._transport.pause_reading()
        self._undrained = True
        self._readable.set()

    def _limit_reading(self, nbytes: int) -> None:
        """Charge what was read; in debt, stop reading until it is repaid."""
        assert self.receive_limits is not None and self._transport is not None
        wait = self.receive_limits.take(nbytes, self._loop.time())
        if wait > 0 and self._throttle is None:
            self._transport.pause_reading()
            self._throttle = self._loop.call_later(wait, self._read_again)

    def _read_again(self) -> None:
        self._throttle = None
        if self._transport is not None and not self._closed and not self._undrained:
            self._transport.resume_reading()

    def eof_received(self) -> bool:
        self._touch()
        if self._undrained:  # (TLS hands over its end while reading is paused)
            self._eof_waiting = True  # fed once the core has taken the bytes before it
        else:
            self._eof_fed = True
            self.conn.receive_data(b"")
        self._readable.set()
        # Keep the write side open (replies still owed), which TLS cannot do: a TLS
        # peer's end of stream closes the connection (asyncio's SSL transport).
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        if self._grace is not None:
            self._grace.cancel()
        # Let go of the transport: asyncio's SSL protocol keeps bound methods of this
        # stream, a cycle that would hold its buffers until a full collection.
        self._transport = None
        self._return_large()
        if self._small is not None:
            self._small.release()  # unmapped: its pages go back to the system now
            self._small = None
        self._readable.set()
        self._writable.set()
        if self._on_lost is not None:  # once the transport has let go of its buffers
            self._loop.call_soon(self._on_lost)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._touch()
        self._writable.set()

    # ---- for the client and server ------------------------------------------------

    async def wait_connected(self) -> None:
        """Wait for ``connection_made`` (the factory runs before it)."""
        await self._connected.wait()

    @property
    def tls(self) -> bool:
        """Whether the connection runs over TLS (then no sendfile: the kernel
        cannot encrypt)."""
        return self._tls

    @property
    def transport(self) -> asyncio.Transport:
        if self._transport is None:
            raise self._gone()
        return self._transport

    @property
    def usable(self) -> bool:
        """Neither closed nor timed out."""
        return not (self._closed or self._timed_out)

    def set_data_sink(self, sink: DataSink | None) -> None:
        """Deliver FileData to ``sink`` as it arrives, instead of through next_event.

        The sink runs inside the protocol callback, so a large download or upload
        costs one loop iteration per read and no task switch. If it raises an
        FtransferError the sink is dropped and next_event raises ``SinkFailed``.
        """
        self._sink = sink

    def _poll(self) -> ev.Event | ev.NeedData | ev.ConnectionClosed:
        """The core's next event that the sink does not consume."""
        while True:
            event = self.conn.next_event()
            if self._sink is None or not isinstance(event, ev.FileData):
                return event
            try:
                self._sink(event.data)
            except FtransferError as exc:
                self._sink = None
                raise SinkFailed(exc) from exc

    def poll_event(self) -> ev.Event | ev.ConnectionClosed | None:
        """The next event if one is complete already, without waiting."""
        stashed, self._stash = self._stash, None
        if isinstance(stashed, FtransferError):
            raise stashed
        event = stashed if stashed is not None else self._poll()
        if isinstance(event, ev.NeedData) and self._eof_waiting and not self._eof_fed:
            self._eof_fed = True
            self.conn.receive_data(b"")
            event = self._poll()
        if isinstance(event, ev.NeedData):
            self._undrained = False
            if self._transport is not None and not self._closed:
                self._readable.clear()
                if self._throttle is None:  # (else the throttle's end resumes it)
                    self._transport.resume_reading()
            return None
        return event

    async def next_event(self) -> ev.Event | ev.ConnectionClosed:
        """The next event from the peer; waits for bytes as needed."""
        while True:
            event = self.poll_event()
            if event is not None:
                return event
            if self._timed_out:
                raise self._gone()
            if self._closed:
                if self._lost is not None or self._eof_fed:
                    raise self._gone()
                self._eof_fed = True
                self.conn.receive_data(b"")
                continue
            await self._readable.wait()

    def send(self, event: ev.Event) -> None:
        """Queue one event's frame for sending (see flush)."""
        self._write(self.conn.send(event))

    def _write(self, data: bytes) -> None:
        if self._closed or self._transport_closing():
            raise self._gone()
        self._cork.append(data)
        self._corked += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if not self._closed:
            self.flush()

    def flush(self) -> None:
        """Hand the queued frames to the transport in one write."""
        if not self._cork:
            return
        if self._closed or self._transport_closing():
            raise self._gone()
        corked, self._cork = self._cork, []
        self._corked = 0
        self._touch()
        if len(corked) == 1:
            self.transport.write(corked[0])
        elif self._tls:  # encrypted where they are: no copy of a DATA frame's bytes first
            self.transport.writelines(coalesced(corked))
        else:
            self.transport.write(b"".join(corked))

    def _transport_closing(self) -> bool:
        """The transport failed a send (a peer that is gone: its connection_lost
        is still to come) or is closing: writing more would only make asyncio
        log "socket.send() raised exception" once per write."""
        transport = self._transport
        return transport is not None and transport.is_closing()

    async def drain(self) -> None:
        """Flush if enough is queued, then wait until the transport is below its
        low-water mark (send-side backpressure)."""
        if self._corked >= CORK_BYTES:
            self.flush()
        await self._writable.wait()
        if self._closed or self._timed_out:
            raise self._gone()

    # ---- files ----------------------------------------------------------------------

    async def send_file(
        self,
        source: FileSource,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        *,
        start: int = 0,
        hasher: Hasher | None = None,
    ) -> bytes | None:
        """Send ``source.size`` bytes (those from ``start``: a resume, whose chunks
        before it ``hasher`` knows) as DATA frames (files.py); returns the file's
        digest, or None if ``cancelled()`` became true between frames. Raises
        FileChanged if the source is shorter than its size."""
        if self._scratch is None:
            self._scratch = new_scratch()
        frames = file_frames(
            self.conn,
            source,
            self._scratch,
            progress,
            cancelled,
            sendfile=not self.tls,
            frame_bytes=frame_bytes(self.send_limits, MAX_FRAME_BYTES),
            start=start,
            hasher=hasher,
        )
        answer: int | None = None
        try:
            while True:
                op = frames.send(answer)
                if isinstance(op, SendfileFrame):
                    answer = await self._sendfile_frame(op.fd, op.offset, op.count)
                    sent = op.count
                else:
                    assert isinstance(op, WriteFrame)  # (no CopyFrame: not asked for)
                    self._write(op.data)
                    if op.body:
                        self._write(op.body)
                    await self.drain()
                    # One loop turn per frame even when the transport never pushes
                    # back: a TLS transport over a dead socket drops what it is given
                    # without pausing, and only the connection_lost that this lets
                    # run stops the send (else the rest of the file is read and
                    # encrypted for nothing, asyncio warning once per write).
                    await asyncio.sleep(0)
                    answer, sent = None, len(op.data) + len(op.body)
                if self.send_limits is not None:
                    await self._keep_to_limits(sent)
        except StopIteration as stop:
            digest: bytes | None = stop.value
        await self.drain()
        return digest

    async def _keep_to_limits(self, sent: int) -> None:
        """Charge a frame sent; in debt, wait (what is corked goes out first)."""
        assert self.send_limits is not None
        wait = self.send_limits.take(sent, self._loop.time())
        if wait > 0:
            self.flush()
            await asyncio.sleep(wait)
            self._touch()  # (a wait of ours is not the peer's silence)

    async def _sendfile_frame(self, fd: int, offset: int, count: int) -> int:
        """One DATA frame by sendfile; returns the bytes the file had (fewer if it
        shrank: the frame is then completed with zeros)."""
        self._write(self.conn.start_data(count))
        self.flush()  # the header must precede the bytes sendfile sends
        self._mid_frame = True
        with open(fd, "rb", buffering=0, closefd=False) as file:
            self._sending = self._loop.create_task(
                self._loop.sendfile(self.transport, file, offset, count, fallback=True)
            )
            try:
                sent = await self._sending
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not self._timed_out or (task is not None and task.cancelling()):
                    raise  # cancelled from outside (shutdown), not by the watchdog
                raise self._gone() from None
            except (OSError, RuntimeError) as exc:
                if self._closed or self._timed_out:
                    raise self._gone() from None
                if not isinstance(exc, OSError) or _socket_side(exc):
                    raise ConnectionFailed(f"connection lost: {exc}") from None
                self._complete_frame(count - _sent_before(file, offset, count))
                raise unreadable(exc) from None
            finally:
                self._sending = None
        self._complete_frame(count - sent)
        return sent

    def _complete_frame(self, missing: int) -> None:
        """End the DATA frame being sent with ``missing`` zero bytes."""
        if missing:
            self.transport.write(bytes(missing))
        self._mid_frame = False
        self._touch()

    # ---- ending ---------------------------------------------------------------------

    def close_with_error(self, error: FtransferError) -> None:
        """Server: end the connection with ERROR (code, reason) where the stream is at
        a frame boundary, then close; otherwise just close."""
        if not self._mid_frame and not self._closed:
            with contextlib.suppress(FtransferError):
                self._write(self.conn.close_with_error(error.code or 50, str(error)))
        self.close()

    def close(self) -> None:
        """Close after flushing what is queued (an abort if the peer does not read)."""
        if self._transport is not None and not self._transport.is_closing():
            if not self._closed:
                with contextlib.suppress(FtransferError):
                    self.flush()
            self._transport.close()
            self._grace = self._loop.call_later(CLOSE_GRACE_S, self.abort)

    def abort(self) -> None:
        """Close at once with a reset, discarding what is queued, in the transport
        and in the kernel (a plain close would leave the unsent bytes, and the FIN
        behind them, waiting on a peer that does not read)."""
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            if sock is not None and not self._closed:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the transport has gone."""
        while not self._closed:
            self._readable.clear()
            await self._readable.wait()
