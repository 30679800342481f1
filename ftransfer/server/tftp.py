"""The TFTP service: RFC 1350 clients over the same operations as every transport.

Theory of operation
-------------------
The listening socket (``serve --tftp-port``) is read by the asyncio loop. A valid
RRQ or WRQ becomes a ``_Transfer``: a new socket on an ephemeral port (the server's
transfer id) and a thread that asks ``Operations`` for the file (the same names,
read-only policy, limits, atomic commit and log line as the native protocols),
negotiates options and runs a ``BlockSender`` or ``BlockReceiver`` core with
``io.threaded``.

Reflection hardening: TFTP cannot validate a source address before answering, so a
spoofed request must cost as little as the protocol allows.

- A transfer never retransmits until the peer has answered it (the core's rule);
  a client whose first reply was lost repeats its request, and the repeat is
  routed to its transfer (keyed by source address and port) instead of starting
  a second one. No ending (a give-up, an eviction, a shutdown) sends anything to a
  peer that never answered.
- Every error sent to an address that has not proved itself (malformed request,
  over a cap) is cut to at most three times the bytes received; a datagram too
  short to afford one gets no answer. The one reply that cannot be cut is the
  protocol's: the first DATA to an RRQ without options, 516 bytes for the
  smallest RRQ of 10 bytes (51.6x), sent once.
- Transfers are capped per address and in all. When the table is full, the oldest
  transfer whose peer never answered is evicted first (a SYN-cache policy, in
  slots.py), so a spoofed flood cannot lock real clients out for long. An evicted
  transfer is told to stop and its thread woken by an empty datagram to its own
  port, so its socket and file go at once (close does the same to every
  transfer); threads still ending count against LIVE_THREADS_PER_SLOT x the cap,
  and ``join`` waits for every one of them before the store is closed.

Uploads are decoded (netascii), hashed and written as blocks arrive; the final ACK
is sent only after the atomic commit, so a client is told "done" only for a file
that is whole at its final name. TFTP carries no checksum: the log line has the
xxh3-128 of what was committed, and a client that sent tsize has its size checked.
Downloads are read sequentially up to the size found at open; a read short of it
(the file shrank) ends the transfer with ERROR 0 in place of a short final block,
which the peer would take for the end of a whole file.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from ..config import ServerConfig
from ..errors import (
    Exists,
    FtransferError,
    InternalError,
    NoSpace,
    NotFound,
    Refused,
    TooLarge,
    error_from_code,
)
from ..io import threaded
from ..io.datagram import DatagramPump
from ..io.files import FileChanged
from ..io.udp import SOCKET_BUFFER_BYTES, DatagramSocket
from ..proto.events import Completed, DataReceived, Failed
from ..proto.tftp import netascii
from ..proto.tftp.packets import (
    ErrorCode,
    Limits,
    Request,
    TftpPacketError,
    encode_ack,
    encode_error,
    encode_oack,
    negotiate,
    parse_untrusted,
)
from ..proto.tftp.receiver import BlockReceiver
from ..proto.tftp.sender import BlockSender
from ..proto.tftp.transfer import DEFAULT_TIMEOUT_S, Address
from .operations import Download, Operations, Principal, Requester, Upload, format_peer
from .slots import TransferTable

logger = logging.getLogger("ftransfer.tftp")

AMPLIFICATION_LIMIT = 3
"""An unproven address gets at most this many bytes per byte it sent (errors)."""
MODES = ("octet", "netascii")
LIVE_THREADS_PER_SLOT = 2
"""Transfer threads alive at most, per slot of --tftp-max-sessions: evicted ones
end at once, but until they have, new requests past this are told "busy"."""


def tftp_error_code(exc: FtransferError) -> int:
    """The RFC 1350 code for a refusal."""
    if isinstance(exc, NotFound):
        return ErrorCode.FILE_NOT_FOUND
    if isinstance(exc, NoSpace | TooLarge):
        return ErrorCode.DISK_FULL
    if isinstance(exc, Exists):
        return ErrorCode.FILE_EXISTS
    if isinstance(exc, Refused):  # path, permission, read-only, not a regular file
        return ErrorCode.ACCESS_VIOLATION
    return ErrorCode.NOT_DEFINED


def bounded_error(code: int, message: str, received: int) -> bytes | None:
    """An ERROR packet no larger than AMPLIFICATION_LIMIT x ``received`` bytes."""
    budget = AMPLIFICATION_LIMIT * received - 5  # opcode, code, NUL
    if budget < 0:
        return None
    return encode_error(code, message.encode()[:budget].decode("utf-8", "ignore"))


def sequential_reader(read: Callable[[int, int], bytes], size: int) -> Callable[[int], bytes]:
    """``read(n)`` from the start, stopping after ``size`` bytes (the size that was
    announced, even if the file grows meanwhile). A read that comes back short
    before ``size`` (the file shrank) raises FileChanged: a short block would end
    the transfer as if the file were whole."""
    position = 0

    def read_next(n: int) -> bytes:
        nonlocal position
        want = min(n, size - position) if position < size else 0
        data = read(position, want) if want else b""
        if len(data) < want:
            raise FileChanged("the file changed size while it was being sent")
        position += len(data)
        return data

    return read_next


class _Transfer:
    """One TFTP transfer: its socket, thread, core and operation."""

    def __init__(
        self, service: TftpService, request: Request, peer: Address, received: int
    ) -> None:
        self.service, self.request, self.peer = service, request, peer
        self.received = received
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stopping = False
        self.evicted = False
        self.core: BlockSender | BlockReceiver | None = None
        self._upload: Upload | None = None
        self._download: Download | None = None
        self._decoder = netascii.Decoder() if request.mode == "netascii" else None
        self.who = Requester(peer=format_peer(*peer), transport="tftp", principal=service.principal)
        self.sock = socket.socket(service.family, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        if service.family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind((service.host, 0))
        host, port = self.sock.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = "::1" if service.family == socket.AF_INET6 else "127.0.0.1"
        self._own_address = (host, port)
        self.thread = threading.Thread(target=self._main, name=f"tftp {peer}", daemon=True)

    @property
    def proven(self) -> bool:
        return self.core is not None and self.core.proven

    def wake_to_stop(self) -> None:
        """End now (evicted, or the server is closing): the loop sees ``stopping``
        as finished at its next turn, and an empty datagram to our own port wakes it
        from its receive at once, so the socket, file and thread go now rather than
        at the next poll. ``_end`` then tells a proven peer why."""
        self.stopping = True
        with contextlib.suppress(OSError):  # it may have closed on its own meanwhile
            self.sock.sendto(b"", self._own_address)

    def request_repeated(self) -> None:
        """Answer a repeated request with our first packet again (if not proven)."""
        if self.core is None or not self.lock.acquire(blocking=False):
            return  # still opening the file, or busy committing: the peer will retry
        try:
            self.core.request_repeated(time.monotonic())
            threaded.send_all(DatagramSocket(self.sock), self.core, time.monotonic())
        finally:
            self.lock.release()

    def _main(self) -> None:
        try:
            self.core = self._open()
            core = self.core
            threaded.run(
                self.sock,
                core,
                self._on_event,
                finished=lambda: core.finished or self.stopping,
                stop=self._stopped,
                lock=self.lock,
            )
        except FtransferError as exc:
            self._fail(tftp_error_code(exc), exc)
        except Exception:
            logger.exception("tftp %s: internal error", self.who.peer)
            self._fail(ErrorCode.NOT_DEFINED, InternalError("internal server error"))
        finally:
            try:
                self._end()
            finally:
                self.service.exited(self)

    def _fail(self, code: int, exc: FtransferError) -> None:
        """A refusal before the transfer began gets a bounded ERROR; a failure during
        it (the file shrank, a read error) ends the core, which tells a proven peer."""
        core = self.core
        if core is None:
            self._send_error(code, str(exc))
            return
        with self.lock:
            core.abort(code, str(exc))
            with contextlib.suppress(OSError):
                threaded.send_all(DatagramSocket(self.sock), core, time.monotonic())
        if self._download is not None:
            self._download.failed(exc)

    def _end(self) -> None:
        core = self.core
        if core is not None and not core.finished:
            # Shutdown tells a proven peer why; an eviction (only unproven peers are
            # evicted) and an unproven peer get nothing (the core sends nothing then).
            reason = "evicted" if self.evicted else "server shutting down"
            core.abort(ErrorCode.NOT_DEFINED, reason)
            with contextlib.suppress(OSError):
                threaded.send_all(DatagramSocket(self.sock), core, time.monotonic())
        if self._upload is not None:
            self._upload.abort("the transfer ended before the last block")
        if self._download is not None:
            self._download.__exit__(None, None, None)
        self.sock.close()
        self.service.forget(self)

    def _stopped(self) -> bool:
        return self.stopping or self.service.stop.is_set()

    def _send_error(self, code: int, message: str) -> None:
        """An ERROR before the peer proved its address: bounded like the listener's."""
        datagram = bounded_error(code, message, self.received)
        if datagram is not None:
            with contextlib.suppress(OSError):
                self.sock.sendto(datagram, self.peer)

    def _open(self) -> BlockSender | BlockReceiver:
        config, request = self.service.config, self.request
        limits = Limits(max_blksize=config.tftp_max_blksize, max_windowsize=config.tftp_max_window)
        give_up = config.tftp_give_up_s
        if request.write:
            params, accepted = negotiate(request.options, limits, write=True, file_size=None)
            octet_size = params.tsize if self._decoder is None else None
            self._upload = self.service.ops.upload(self.who, request.filename, size=octet_size)
            first = encode_oack(accepted) if accepted else encode_ack(0)
            linger = 3 * (params.timeout_s or DEFAULT_TIMEOUT_S)
            return BlockReceiver(
                self.peer,
                params,
                now=time.monotonic(),
                give_up_s=give_up,
                first=first,
                linger_s=linger,
            )
        self._download = download = self.service.ops.download(self.who, request.filename)
        size = download.size if self._decoder is None else None
        params, accepted = negotiate(request.options, limits, write=False, file_size=size)
        read = sequential_reader(download.read, download.size)
        if self._decoder is not None:
            read = netascii.encoding_reader(read)
        oack = encode_oack(accepted) if accepted else None
        return BlockSender(
            read, self.peer, params, now=time.monotonic(), give_up_s=give_up, oack=oack
        )

    def _on_event(self, event: object) -> None:
        if isinstance(event, DataReceived):
            self._store(event)
        elif isinstance(event, Completed):
            if self._download is not None:
                self._download.sent()
            self.service.forget(self)  # a lingering upload no longer holds a slot
        elif isinstance(event, Failed):
            self._failed(event)

    def _failed(self, event: Failed) -> None:
        error = error_from_code(event.code, event.message)
        if self._upload is not None:
            self._upload.fail(error)
        elif self._download is not None:
            self._download.failed(error)

    def _store(self, event: DataReceived) -> None:
        upload, core = self._upload, self.core
        assert upload is not None and isinstance(core, BlockReceiver)
        try:
            data = bytes(event.data)
            if self._decoder is not None:
                data = self._decoder.feed(data) + (self._decoder.finish() if event.final else b"")
            upload.write(data)
            if event.final:
                upload.commit(upload.digest)
                core.accept_final(time.monotonic())
        except FtransferError as exc:
            core.abort(tftp_error_code(exc), str(exc))


class TftpService:
    """The TFTP listener and its table of transfers."""

    def __init__(self, ops: Operations, config: ServerConfig, sock: socket.socket) -> None:
        self.ops, self.config = ops, config
        self.family = sock.family
        self.address = sock.getsockname()
        self.host = str(self.address[0])
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._table: TransferTable[_Transfer] = TransferTable(
            max_total=config.tftp_max_sessions,
            max_per_host=config.tftp_max_sessions_per_address,
        )
        self._running: set[_Transfer] = set()
        """Every transfer whose thread has not ended, evicted ones included."""
        self.max_threads = LIVE_THREADS_PER_SLOT * config.tftp_max_sessions
        self._pump = DatagramPump(sock, self._on_datagram, lambda: None, lambda: None)

    @property
    def read_only(self) -> bool:
        return self.ops.policy.read_only or not self.principal.write

    @property
    def principal(self) -> Principal:
        """TFTP cannot log in: it reads the served root, and writes there only with
        ``--tftp-writable``; it never removes anything."""
        return Principal(write=self.config.tftp_writable)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._table)

    @property
    def refused(self) -> int:
        return self._table.refused

    @property
    def evicted(self) -> int:
        return self._table.evicted

    def _on_datagram(self, datagram: memoryview, address: Address) -> None:
        received = len(datagram)
        try:
            packet = parse_untrusted(datagram)
        except TftpPacketError as exc:
            self._answer(ErrorCode.ILLEGAL_OPERATION, str(exc), address, received)
            return
        if not isinstance(packet, Request):
            self._answer(ErrorCode.ILLEGAL_OPERATION, "expected RRQ or WRQ", address, received)
            return
        with self._lock:
            existing = self._table.get(address)
        if existing is not None:
            existing.request_repeated()
            return
        refusal = self._check(packet)
        if refusal is not None:
            self._answer(*refusal, address, received)
            return
        if not self._admit(address):
            self._answer(ErrorCode.NOT_DEFINED, "server busy, try later", address, received)
            return
        try:
            transfer = _Transfer(self, packet, address, received)
        except OSError as exc:
            with self._lock:
                self._table.cancel(address)
            logger.warning("tftp %s: cannot open a transfer socket: %s", address, exc)
            return
        with self._lock:
            self._table.insert(transfer)
            self._running.add(transfer)
        transfer.thread.start()

    def _check(self, request: Request) -> tuple[int, str] | None:
        if request.mode not in MODES:
            return ErrorCode.ILLEGAL_OPERATION, f"mode {request.mode!r} is not supported"
        if request.write and self.read_only:
            reason = "the server is read-only" if self.ops.policy.read_only else "TFTP is read-only"
            return ErrorCode.ACCESS_VIOLATION, f"{reason} (the operator may serve --tftp-writable)"
        return None

    def _admit(self, address: Address) -> bool:
        """Reserve a slot for ``address`` (slots.py: over a cap, the oldest transfer
        whose peer never answered is evicted); False if the request is refused."""
        with self._lock:
            if len(self._running) >= self.max_threads:  # evicted ones not yet gone
                return False
            evicted = self._table.admit(address)
        if evicted is None:
            return False
        for victim in evicted:
            victim.evicted = True
            victim.wake_to_stop()  # its thread ends now, silently
        return True

    def _answer(self, code: int, message: str, address: Address, received: int) -> None:
        datagram = bounded_error(code, message, received)
        if datagram is not None:
            self._pump.send([(datagram, address)])

    def forget(self, transfer: _Transfer) -> None:
        """A transfer ended: free its slot (unless it was evicted)."""
        with self._lock:
            self._table.remove(transfer)

    def close(self) -> None:
        """Stop listening and tell every transfer to end now (uploads are aborted)."""
        self.stop.set()
        self._pump.close()
        with self._lock:
            running = list(self._running)
        for transfer in running:
            transfer.wake_to_stop()

    def exited(self, transfer: _Transfer) -> None:
        """A transfer's thread is about to return: it no longer counts as running."""
        with self._lock:
            self._running.discard(transfer)

    def join(self) -> None:
        """Wait for every transfer thread to end (after ``close``), evicted and
        lingering ones included: the store is closed after this."""
        with self._lock:
            threads = [t.thread for t in self._running]
        for thread in threads:
            thread.join(timeout=2 * threaded.STOP_POLL_S + 5)
