"""asyncio adapter for the TCP core: moves bytes, decides nothing.

Theory of operation
-------------------
``FrameStream`` is an ``asyncio.BufferedProtocol``: the kernel copies received bytes
straight into one reused buffer (``recv_into``), and the whole read is handed to the
sans-IO ``Connection``. Because ``FileData`` events are views into that buffer,
reading is paused until the consumer has drained the core (``next_event`` returned
NEED_DATA); then reading resumes. That pause is also the receive-side backpressure:
a consumer that does not keep up stops the socket being read, and TCP flow control
slows the peer. While a file streams in, a *data sink* (``set_data_sink``) takes
the bytes inside the protocol callback itself: no pause and no task switch per read.

Sending: frames are *corked*: queued, and handed to the transport in one write at
the end of the current event-loop iteration (a ``call_soon`` scheduled by the first
queued frame), or earlier before a sendfile, on ``drain`` once CORK_BYTES are
queued, and on close. Everything the server answers to one read of pipelined
requests, or the client sends for a batch of small files, costs one send syscall
instead of three per file; no frame waits longer than one loop iteration, whichever
task wrote it and whatever the other tasks are waiting for.
Small frames go through ``transport.write``; file bodies go out with
``os.sendfile`` (zero copy) in DATA frames of up to MAX_FRAME_BYTES. The sender's
digest is computed from the same file range with pread into a reused scratch buffer
(page-cache hot, no network data touched twice). ``drain`` waits while the transport
is above its high-water mark: send-side backpressure.

Idle timeout: one watchdog timer per connection. Receiving bytes, or handing bytes
to the transport, records the time; the timer re-arms itself for the remaining
interval and aborts the connection once nothing moved for ``idle_timeout_s``. This
costs a clock read per read or write, where a timeout around every wait would cost
a timer handle per event. A download in progress is activity; a peer that neither
sends nor reads is not.

OS errors are mapped to ``ConnectionFailed`` (or ``TransferTimeout`` after the
watchdog fired) here, once, where they surface.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from ..checksum import Hasher, hash_range, new_hasher
from ..config import (
    CORK_BYTES,
    MAX_FRAME_BYTES,
    RECV_BUFFER_BYTES,
    SMALL_FILE_BYTES,
    WRITE_HIGH_WATER_BYTES,
    WRITE_LOW_WATER_BYTES,
)
from ..errors import ConnectionFailed, FtransferError, TransferTimeout
from ..proto.tcp import events as ev
from ..proto.tcp.connection import Connection

Progress = Callable[[int], None]
"""Called with the number of bytes just sent or received."""


DataSink = Callable[[bytes | memoryview], None]
"""Consumes received file bytes (write and hash them) before the buffer is reused."""


class SinkFailed(FtransferError):
    """The data sink raised; ``cause`` says why. The stream itself is intact."""

    def __init__(self, cause: FtransferError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class FileShrank(ConnectionFailed):
    """The file being sent got shorter mid-transfer; the frame cannot be completed."""


class FrameStream(asyncio.BufferedProtocol):
    """One TCP connection: a sans-IO ``Connection`` plus a transport."""

    def __init__(self, conn: Connection, scratch: bytearray, idle_timeout_s: float) -> None:
        self.conn = conn
        self._idle_s = idle_timeout_s
        self._active_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False
        self._sink: DataSink | None = None
        self._cork: list[bytes] = []
        self._corked = 0
        self._flush_scheduled = False
        self._stash: ev.Event | ev.NeedData | ev.ConnectionClosed | FtransferError | None = None
        self._scratch = scratch
        self._buf = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._transport: asyncio.Transport | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._connected = asyncio.Event()
        self._lost: Exception | None = None
        self._closed = False
        self._eof_fed = False
        self.peer: tuple[str, int] = ("", 0)

    # ---- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
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
            self.abort()
        else:
            self._watchdog = self._loop.call_later(self._idle_s - idle_for, self._check_idle)

    def _gone(self) -> FtransferError:
        """The error for using a connection that has ended."""
        if self._timed_out:
            return TransferTimeout(
                f"no progress for {self._idle_s:g} s: the peer stopped answering"
            )
        return ConnectionFailed(f"connection lost: {self._lost or 'closed by peer'}")

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._transport is not None
        self._touch()
        self.conn.receive_data(self._view[:nbytes])
        if self._sink is not None:
            try:
                self._stash = self._poll()
            except FtransferError as exc:
                self._stash = exc
            if isinstance(self._stash, ev.NeedData):
                self._stash = None
                return  # the sink took everything: keep reading, nobody to wake
        self._transport.pause_reading()
        self._readable.set()

    def eof_received(self) -> bool:
        self._touch()
        self._eof_fed = True
        self.conn.receive_data(b"")
        self._readable.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._readable.set()
        self._writable.set()

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
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

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

    async def next_event(self) -> ev.Event | ev.ConnectionClosed:
        """The next event from the peer; waits for bytes as needed."""
        while True:
            stashed, self._stash = self._stash, None
            if isinstance(stashed, FtransferError):
                raise stashed
            event = stashed if stashed is not None else self._poll()
            if not isinstance(event, ev.NeedData):
                return event
            if self._closed:
                if self._lost is not None or self._eof_fed or self._timed_out:
                    raise self._gone()
                self._eof_fed = True
                self.conn.receive_data(b"")
                continue
            self._readable.clear()
            self.transport.resume_reading()
            await self._readable.wait()

    def send(self, event: ev.Event) -> None:
        """Queue one event's frame for sending (see flush)."""
        self._write(self.conn.send(event))

    def _write(self, data: bytes) -> None:
        if self._closed:
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
        if self._closed:
            raise self._gone()
        data = b"".join(self._cork) if len(self._cork) > 1 else self._cork[0]
        self._cork.clear()
        self._corked = 0
        self._touch()
        self.transport.write(data)

    async def drain(self) -> None:
        """Flush if enough is queued, then wait until the transport is below its
        low-water mark (send-side backpressure)."""
        if self._corked >= CORK_BYTES:
            self.flush()
        await self._writable.wait()
        if self._closed:
            raise self._gone()

    async def send_file(
        self,
        fd: int,
        size: int,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> bytes | None:
        """Send ``size`` bytes of ``fd`` as DATA frames; returns their xxh3-128 digest.

        Returns None if ``cancelled()`` became true between frames (the caller then
        ends the file with ABORT or ERROR). Raises FileShrank if the file is shorter
        than ``size``: the stream cannot be resynchronised after that.
        """
        hasher = new_hasher()
        if size <= SMALL_FILE_BYTES:
            return await self._send_small(fd, size, hasher, progress)
        offset = 0
        while offset < size:
            if cancelled():
                return None
            count = min(MAX_FRAME_BYTES, size - offset)
            await self._sendfile_frame(fd, offset, count)
            if hash_range(hasher, fd, offset, count, self._scratch) != count:
                raise FileShrank("file changed size while it was being sent")
            offset += count
            if progress is not None:
                progress(count)
        return hasher.digest()

    async def _send_small(
        self, fd: int, size: int, hasher: Hasher, progress: Progress | None
    ) -> bytes:
        data = os.pread(fd, size, 0) if size else b""
        if len(data) != size:
            raise FileShrank("file changed size before it was sent")
        if size:
            self._write(self.conn.send(ev.FileData(data=data)))
        hasher.update(data)
        await self.drain()
        if progress is not None:
            progress(size)
        return hasher.digest()

    async def _sendfile_frame(self, fd: int, offset: int, count: int) -> None:
        self._write(self.conn.start_data(count))
        self.flush()  # the header must precede the bytes sendfile sends
        loop = asyncio.get_running_loop()
        with open(fd, "rb", buffering=0, closefd=False) as file:
            try:
                sent = await loop.sendfile(self.transport, file, offset, count, fallback=True)
            except (OSError, RuntimeError) as exc:
                if self._closed:
                    raise self._gone() from None
                raise ConnectionFailed(f"connection lost: {exc}") from None
        self._touch()
        if sent != count:
            self.transport.abort()
            raise FileShrank("file changed size while it was being sent")

    def close(self) -> None:
        """Close after flushing what is queued."""
        if self._transport is not None and not self._transport.is_closing():
            if not self._closed:
                self.flush()
            self._transport.close()

    def abort(self) -> None:
        """Close at once, discarding what is queued."""
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the transport has gone."""
        while not self._closed:
            self._readable.clear()
            await self._readable.wait()
