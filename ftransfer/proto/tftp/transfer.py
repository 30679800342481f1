"""TFTP transfers, sans-IO: a block sender and a block receiver on virtual time.

Theory of operation
-------------------
Both ends of a TFTP transfer are one of two machines, whoever started it:

- ``BlockSender`` sends a byte stream as DATA blocks, ``windowsize`` at a time
  (RFC 7440; 1 is RFC 1350's lockstep). It keeps the encoded blocks of the open
  window for retransmission, and reads the next ones from a sequential ``read(n)``.
- ``BlockReceiver`` takes DATA in order, delivers each payload as an event and acks
  at the end of each window, on a gap, and on the final (short) block.

Block numbers on the wire are 16 bits and roll over to 0 after 65535, as tftp-hpa,
curl and tftpy do; internally blocks are counted without wrapping, and a wire
number is mapped to the one nearest the window, so files of any length work.

Rules that real TFTP implementations get wrong, kept here:

- **No Sorcerer's Apprentice**: an ACK that does not advance the window is counted
  and ignored; only a timeout retransmits. A new ACK that lands inside the window
  means the receiver saw a gap, and the window restarts after it (RFC 7440 sec. 4).
- **Adaptive timeout**: an RFC 6298 estimator from blocks sent once (Karn), clamped
  to the negotiated ``timeout`` (1 s by default), with backoff up to that bound.
- **No retransmission to an unproven peer**: until the peer has sent us something on
  this transfer (an ACK to our first packet, or DATA), a timeout sends nothing. A
  TFTP server cannot validate an address first, so this keeps a spoofed request
  worth one reply; a real client that lost it repeats its request, and
  ``request_repeated`` answers that with the first packet again.
- **Lost final ACK**: the receiver stays ``linger_s`` after acking the final block,
  re-acking a repeated final block, and the sender treats silence after its final
  block as a timeout like any other.
- **Transfer ids**: a datagram from any address but the peer's gets ERROR 5 sent to
  its source and changes nothing.

Every public method takes ``now``; ``get_timer()`` is the one absolute deadline,
``datagrams_to_send()`` the (bytes, address) pairs to transmit, ``next_event()`` what
happened. ``TftpClient`` wraps one of the two machines behind the request handshake.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ...errors import (
    Exists,
    FtransferError,
    IntegrityError,
    InternalError,
    NoSpace,
    NotFound,
    PermissionDenied,
    Refused,
    RemoteProtocolError,
    TransferTimeout,
)
from ..rtt import MIN_RTO_S, RttEstimator
from .packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    OptionError,
    Params,
    Request,
    TftpPacketError,
    check_oack,
    encode_ack,
    encode_data,
    encode_error,
    encode_request,
    parse_untrusted,
)

Address = tuple[str, int]
Reader = Callable[[int], bytes]

_DATA, _ACK, _ERROR = int(Opcode.DATA), int(Opcode.ACK), int(Opcode.ERROR)

DEFAULT_TIMEOUT_S = 1.0
"""Upper bound of the retransmission timeout when the peer negotiated none
(tftp-hpa's default)."""
TIME_EVERY = 16
"""In lockstep, one block in this many is timed for the RTT estimate: a sample per
16 round trips keeps the estimator current at a sixteenth of its cost per block."""
REACK_GAP_S = 0.002
"""A receiver re-acks an old or early block at most once per this interval after
its last ack (plus once per new gap): enough to answer a retransmitted window,
never one ack per duplicate."""

_ERROR_CLASSES: dict[int, type[FtransferError]] = {
    ErrorCode.FILE_NOT_FOUND: NotFound,
    ErrorCode.ACCESS_VIOLATION: PermissionDenied,
    ErrorCode.DISK_FULL: NoSpace,
    ErrorCode.ILLEGAL_OPERATION: RemoteProtocolError,
    ErrorCode.UNKNOWN_TID: RemoteProtocolError,
    ErrorCode.FILE_EXISTS: Exists,
    ErrorCode.OPTION_REFUSED: Refused,
}


def error_from_tftp(code: int, message: str) -> FtransferError:
    """The exception for an ERROR packet received from a TFTP peer."""
    cls = _ERROR_CLASSES.get(code, Refused)
    return cls(f"tftp error {code}: {message}" if message else f"tftp error {code}")


class DataReceived(NamedTuple):
    """The next in-order payload; ``final`` for the short block that ends the file.

    After a final block the receiver waits for ``accept_final`` (the commit) before
    it sends the final ACK, so the peer only hears "done" once the file is stored.
    (A NamedTuple, not a frozen dataclass: one is made per block, and a frozen
    dataclass costs a microsecond more to build, a few percent of a round trip.)"""

    payload: bytes
    final: bool


@dataclass(frozen=True, slots=True)
class Completed:
    """The transfer is done: the final block was acknowledged (sender) or the
    final ACK was sent (receiver)."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The transfer ended without completing; ``error`` says why."""

    error: FtransferError


Event = DataReceived | Completed | Failed


@dataclass(slots=True)
class TftpStats:
    """Counters for the end-of-transfer summary."""

    bytes: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    retransmitted: int = 0
    duplicates: int = 0
    timeouts: int = 0
    strangers: int = 0
    malformed: int = 0


class _Machine:
    """What both machines share: peer binding, output, events, timers, give-up.

    Round-trip time is measured the classic way (RFC 6298 sec. 3, Karn): one block
    at a time is timed, from its first transmission to the ACK that covers it, and a
    retransmission of it cancels the measurement. That is a sample per round trip,
    at O(1) cost per block; in lockstep only every TIME_EVERY-th block is timed."""

    def __init__(
        self, peer: Address, params: Params, *, now: float, give_up_s: float, rtt: RttEstimator
    ) -> None:
        self.peer, self.params = peer, params
        self.stats = TftpStats()
        self.finished = False
        self.proven = False
        self._rtt = rtt
        self._bound = params.timeout_s or DEFAULT_TIMEOUT_S
        self._rto = self._compute_rto()
        self._give_up_s = give_up_s
        self._give_up_at = now + give_up_s
        self._retry_at: float | None = None
        self._out: list[tuple[bytes, Address]] = []
        self._events: collections.deque[Event] = collections.deque()
        self._first: bytes | None = None
        self._timed: int | None = None  # the block (or ack) being timed
        self._timed_at = 0.0

    def _compute_rto(self) -> float:
        return max(MIN_RTO_S, min(self._rtt.rto(), self._bound))

    def rto(self) -> float:
        return self._rto

    def _sample(self, rtt: float) -> None:
        self._rtt.on_sample(rtt)
        self._timed = None
        self._rto = self._compute_rto()

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out = self._out
        if out:
            self._out = []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self.finished:
            return None
        retry = self._retry_at
        give_up = self._give_up_at
        return give_up if retry is None or give_up < retry else retry

    def _send(self, datagram: bytes) -> None:
        self._out.append((datagram, self.peer))
        self.stats.datagrams_sent += 1

    def _fail(self, error: FtransferError, *, notify: tuple[int, str] | None = None) -> None:
        if self.finished:
            return
        if notify is not None:
            self._send(encode_error(*notify))
        self.finished = True
        self._events.append(Failed(error))

    def abort(self, code: int, message: str) -> None:
        """End the transfer from our side, telling the peer why (no event)."""
        if not self.finished:
            self._send(encode_error(code, message))
            self.finished = True

    def request_repeated(self, now: float) -> None:
        """The peer sent its request again: it lost our first packet, so resend it
        (only while the peer has not yet shown it receives us)."""
        if not self.proven and not self.finished and self._first is not None:
            self._send(self._first)
            self.stats.retransmitted += 1

    def receive(self, datagram: bytes | memoryview, address: Address, now: float) -> None:
        """One datagram from ``address``."""
        self.stats.datagrams_received += 1
        if address != self.peer:
            self.stats.strangers += 1
            self._out.append((encode_error(ErrorCode.UNKNOWN_TID, "unknown transfer id"), address))
            return
        if self.finished or len(datagram) < 4 or datagram[0]:
            self.stats.malformed += not self.finished
            return
        opcode = datagram[1]
        if opcode == _ACK and len(datagram) == 4:  # the hot paths, parsed in place
            self._on_ack(datagram[2] << 8 | datagram[3], now)
        elif opcode == _DATA:
            self._on_data(datagram[2] << 8 | datagram[3], bytes(datagram[4:]), now)
        elif opcode == _ERROR:
            try:
                packet = parse_untrusted(datagram)
            except TftpPacketError:
                packet = Error(ErrorCode.NOT_DEFINED, "")
            assert isinstance(packet, Error)
            self._fail(error_from_tftp(packet.code, packet.message))
        else:
            self.stats.malformed += 1

    def handle_timer(self, now: float) -> None:
        if self.finished:
            return
        if now >= self._give_up_at:
            self._on_give_up(now)
        elif self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            if self.proven:
                self.stats.timeouts += 1
                self._timed = None  # Karn: whatever was timed is now ambiguous
                self._rtt.on_timeout()
                self._rto = self._compute_rto()
                self._retransmit(now)

    def _on_give_up(self, now: float) -> None:
        seconds = self._give_up_s
        self._fail(
            TransferTimeout(f"tftp: no progress from the peer for {seconds:g} s"),
            # A peer that never answered may be a spoofed address: send it nothing more.
            notify=(ErrorCode.NOT_DEFINED, "timed out") if self.proven else None,
        )

    def _on_ack(self, block: int, now: float) -> None:
        self.stats.malformed += 1

    def _on_data(self, block: int, payload: bytes, now: float) -> None:
        self.stats.malformed += 1

    def _retransmit(self, now: float) -> None:
        raise NotImplementedError


class BlockSender(_Machine):
    """Sends ``read``'s bytes as DATA blocks (server RRQ, client put)."""

    def __init__(
        self,
        read: Reader,
        peer: Address,
        params: Params,
        *,
        now: float,
        give_up_s: float,
        oack: bytes | None = None,
        proven: bool = False,
        rtt: RttEstimator | None = None,
    ) -> None:
        super().__init__(peer, params, now=now, give_up_s=give_up_s, rtt=rtt or RttEstimator())
        self._read = read
        self._blksize, self._window = params.blksize, params.windowsize
        self._unacked: collections.deque[bytes] = collections.deque()
        """Encoded DATA of blocks acked+1, acked+2, ... that have been read."""
        self._sent_hi = 0  # highest block sent so far
        self._final: int | None = None
        self.proven = proven
        if oack is not None:  # the OACK is "block 0"; data starts after its ACK 0
            self._acked = -1
            self._first = oack
            self._send(oack)
            self._timed, self._timed_at = 0, now
            self._retry_at = now + self._rto
        else:
            self._acked = 0
            self._send_window(now)
            self._first = self._unacked[0] if self._unacked else None

    def _read_block(self, block: int) -> bytes:
        payload = self._read(self._blksize)
        if len(payload) > self._blksize:
            raise InternalError("read returned more than asked")
        if len(payload) < self._blksize:
            self._final = block
        self.stats.bytes += len(payload)
        return encode_data(block, payload)

    def _send_window(self, now: float) -> None:
        """Send blocks acked+1 .. acked+window (RFC 7440; 1 block in lockstep)."""
        unacked, base = self._unacked, self._acked + 1
        count = self._window
        while len(unacked) < count and self._final is None:
            unacked.append(self._read_block(base + len(unacked)))
        count = min(count, len(unacked))
        out, peer, hi = self._out, self.peer, self._sent_hi
        for offset in range(count):
            out.append((unacked[offset], peer))
            if base + offset <= hi:
                self.stats.retransmitted += 1
                if self._timed == base + offset:
                    self._timed = None  # Karn
            elif self._timed is None and not (base + offset) % TIME_EVERY:
                self._timed, self._timed_at = base + offset, now
        self.stats.datagrams_sent += count
        self._sent_hi = max(hi, base + count - 1)
        self._retry_at = now + self._rto

    def prefetch(self) -> None:
        """Read and encode the next window ahead, so that when its ACK arrives the
        next DATA is ready to go: the adapter calls this after sending, while the
        peer is busy, which takes the file read off the round trip."""
        unacked, target = self._unacked, 2 * self._window
        while len(unacked) < target and self._final is None and self._acked >= 0:
            unacked.append(self._read_block(self._acked + 1 + len(unacked)))

    def _retransmit(self, now: float) -> None:
        if self._acked < 0 and self._first is not None:
            self._send(self._first)
            self.stats.retransmitted += 1
            self._retry_at = now + self._rto
        else:
            self._send_window(now)

    def _on_ack(self, wire: int, now: float) -> None:
        hi = self._sent_hi
        block = hi - ((hi - wire) & 0xFFFF)  # the acked-or-sent block with this number
        acked = self._acked
        if block <= acked:
            self.stats.duplicates += 1  # never a resend: no Sorcerer's Apprentice
            return
        if self._timed is not None and block >= self._timed:
            self._sample(now - self._timed_at)
        elif self._rtt.backoff != 1:
            self._rtt.reset_backoff()
            self._rto = self._compute_rto()
        unacked = self._unacked
        for _ in range(block - max(acked, 0)):
            unacked.popleft()
        self._acked = block
        self.proven = True
        self._give_up_at = now + self._give_up_s
        if self._final is not None and block >= self._final:
            self.finished = True
            self._retry_at = None
            self._events.append(Completed())
            return
        self._send_window(now)


class BlockReceiver(_Machine):
    """Receives DATA blocks in order (server WRQ, client get)."""

    def __init__(
        self,
        peer: Address,
        params: Params,
        *,
        now: float,
        give_up_s: float,
        first: bytes | None = None,
        proven: bool = False,
        linger_s: float = 0.0,
        rtt: RttEstimator | None = None,
    ) -> None:
        super().__init__(peer, params, now=now, give_up_s=give_up_s, rtt=rtt or RttEstimator())
        self._blksize, self._window = params.blksize, params.windowsize
        self._limit = params.tsize
        self._linger_s = linger_s
        self._expected = 1
        self._since_ack = 0
        self._last_ack_at = now
        self._reacked = False
        self._final_pending = False
        self._lingering = False
        self.proven = proven
        self._first = first
        if first is not None:
            self._send(first)
            self._timed, self._timed_at = 0, now
            if proven:  # our ACK 0 to an OACK may be lost: repeat it on timeout
                self._retry_at = now + self._rto

    def _ack(self, now: float) -> None:
        self._send(encode_ack(self._expected - 1))
        self._last_ack_at = now
        self._since_ack = 0

    def _on_data(self, wire: int, payload: bytes, now: float) -> None:
        expected = self._expected
        if wire == expected & 0xFFFF and not self._final_pending and not self._lingering:
            if len(payload) <= self._blksize:
                self._on_in_order(payload, now)
                return
            message = f"block of {len(payload)} bytes exceeds blksize {self._blksize}"
            self._fail(RemoteProtocolError(message), notify=(ErrorCode.ILLEGAL_OPERATION, message))
            return
        self.stats.duplicates += 1
        if self._lingering:
            if wire == (expected - 1) & 0xFFFF:
                self._send(encode_ack(wire))  # our final ACK was lost
            return
        if self._final_pending:
            return
        # An old block (a retransmission) or one past a gap: ack what we have, at
        # once (RFC 7440), but once per gap or per REACK_GAP_S, never per duplicate.
        if not self._reacked or now - self._last_ack_at >= REACK_GAP_S:
            self._reacked = True
            self._timed = None
            self.proven = True
            self._ack(now)

    def _on_in_order(self, payload: bytes, now: float) -> None:
        if self._timed is not None:
            self._sample(now - self._timed_at)
        elif self._rtt.backoff != 1:
            self._rtt.reset_backoff()
            self._rto = self._compute_rto()
        self.proven = True
        self._give_up_at = now + self._give_up_s
        self._reacked = False
        self._expected += 1
        stats = self.stats
        stats.bytes += len(payload)
        final = len(payload) < self._blksize
        limit = self._limit
        if limit is not None and (stats.bytes > limit or (final and stats.bytes != limit)):
            message = f"got {stats.bytes} bytes, {limit} were announced"
            self._fail(IntegrityError(message), notify=(ErrorCode.NOT_DEFINED, message))
            return
        self._events.append(DataReceived(payload, final))
        if final:
            self._final_pending = True
            self._retry_at = None
            return
        self._since_ack += 1
        if self._since_ack >= self._window:
            self._ack(now)
            if not self._expected % TIME_EVERY or self._window >= TIME_EVERY:
                self._timed, self._timed_at = self._expected, now
        self._retry_at = now + self._rto

    def accept_final(self, now: float) -> None:
        """The final block is stored: send its ACK, then linger for a repeat of it."""
        if self.finished or not self._final_pending:
            return
        self._final_pending = False
        self._ack(now)
        self._events.append(Completed())
        if self._linger_s > 0:
            self._lingering = True
            self._retry_at = None
            self._give_up_at = now + self._linger_s
        else:
            self.finished = True

    def _on_give_up(self, now: float) -> None:
        if self._lingering:
            self.finished = True
        elif self._final_pending:  # the commit is slow, not the peer
            self._give_up_at = now + self._give_up_s
        else:
            super()._on_give_up(now)

    def _retransmit(self, now: float) -> None:
        if not self._final_pending and not self._lingering:
            self._ack(now)
            self.stats.retransmitted += 1
            self._retry_at = now + self._rto


Machine = BlockSender | BlockReceiver

FALLBACK_CODES = (ErrorCode.NOT_DEFINED, ErrorCode.ILLEGAL_OPERATION, ErrorCode.OPTION_REFUSED)
"""ERROR codes after which a client that asked for options asks again without them:
8 is RFC 2347's refusal; old servers answer unknown options with 0 or 4."""


class TftpClient:
    """A client transfer: the request handshake, then a sender or a receiver.

    The server answers from a new port (its transfer id); the first answer from the
    server's host fixes the peer. For a get, an OACK is acked with ACK 0 and DATA 1
    means the server ignored the options; for a put, OACK or ACK 0 starts the data.
    An ERROR while options were asked (see FALLBACK_CODES) makes one more request
    without them, so servers that refuse options still work, at RFC 1350's speed.
    """

    def __init__(
        self,
        request: Request,
        server: Address,
        *,
        now: float,
        give_up_s: float,
        read: Reader | None = None,
    ) -> None:
        if request.write != (read is not None):
            raise InternalError("a put needs a reader, a get must not have one")
        self.request, self.server = request, server
        self._read, self._give_up_s = read, give_up_s
        self._rtt = RttEstimator()
        self.machine: Machine | None = None
        self.stats = TftpStats()
        self._out: list[tuple[bytes, Address]] = []
        self._events: collections.deque[Event] = collections.deque()
        self._give_up_at = now + give_up_s
        self._ended = False
        self._fell_back = False
        self._send_request(now)

    @property
    def finished(self) -> bool:
        return self.machine.finished if self.machine is not None else self._ended

    @property
    def params(self) -> Params | None:
        return self.machine.params if self.machine is not None else None

    def _send_request(self, now: float) -> None:
        self._request_bytes = encode_request(self.request)
        self._sent_at: float | None = now
        self._out.append((self._request_bytes, self.server))
        self.stats.datagrams_sent += 1
        self._retry_at = now + self._rtt.rto()

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        if self.machine is not None:
            self._out.extend(self.machine.datagrams_to_send())
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        if self._events:
            return self._events.popleft()
        return self.machine.next_event() if self.machine is not None else None

    def get_timer(self) -> float | None:
        if self.machine is not None:
            return self.machine.get_timer()
        return None if self.finished else min(self._retry_at, self._give_up_at)

    def handle_timer(self, now: float) -> None:
        if self.machine is not None:
            self.machine.handle_timer(now)
        elif self.finished:
            return
        elif now >= self._give_up_at:
            self._end(TransferTimeout(f"tftp: no answer from the server in {self._give_up_s:g} s"))
        elif now >= self._retry_at:
            self._rtt.on_timeout()
            self._sent_at = None  # Karn: no sample from a repeated request
            self._out.append((self._request_bytes, self.server))
            self.stats.datagrams_sent += 1
            self.stats.retransmitted += 1
            self._retry_at = now + self._rtt.rto()

    def accept_final(self, now: float) -> None:
        if isinstance(self.machine, BlockReceiver):
            self.machine.accept_final(now)

    def abort(self, code: int, message: str) -> None:
        if self.machine is not None:
            self.machine.abort(code, message)
        self._ended = True

    def _end(self, error: FtransferError) -> None:
        self._ended = True
        self._events.append(Failed(error))

    def receive(self, datagram: bytes | memoryview, address: Address, now: float) -> None:
        if self.machine is not None:
            self.machine.receive(datagram, address, now)
            return
        if self.finished or address[0] != self.server[0]:
            self.stats.strangers += 1
            return
        try:
            packet = parse_untrusted(datagram)
        except TftpPacketError:
            self.stats.malformed += 1
            return
        if self._sent_at is not None:
            self._rtt.on_sample(now - self._sent_at)
        if isinstance(packet, Error):
            self._on_error(packet, now)
        elif isinstance(packet, OptionAck):
            self._on_oack(packet, address, now)
        elif isinstance(packet, Data) and not self.request.write and packet.block == 1:
            self._start(Params(), address, now)
            if self.machine is not None:
                self.machine.receive(datagram, address, now)
        elif isinstance(packet, Ack) and self.request.write and packet.block == 0:
            self._start(Params(), address, now)
        else:
            self.stats.malformed += 1

    def _on_error(self, packet: Error, now: float) -> None:
        if self.request.options and not self._fell_back and packet.code in FALLBACK_CODES:
            self._fell_back = True
            self.request = Request(self.request.write, self.request.filename, self.request.mode)
            self._send_request(now)
            return
        self._end(error_from_tftp(packet.code, packet.message))

    def _on_oack(self, packet: OptionAck, address: Address, now: float) -> None:
        try:
            params = check_oack(self.request.options, packet.options)
        except OptionError as exc:
            self._out.append((encode_error(ErrorCode.OPTION_REFUSED, str(exc)), address))
            self._end(RemoteProtocolError(f"tftp: {exc}"))
            return
        self._start(params, address, now, oack=True)

    def _start(self, params: Params, peer: Address, now: float, *, oack: bool = False) -> None:
        give_up = self._give_up_s
        if self._read is not None:
            self.machine = BlockSender(
                self._read, peer, params, now=now, give_up_s=give_up, proven=True, rtt=self._rtt
            )
        else:
            self.machine = BlockReceiver(
                peer,
                params,
                now=now,
                give_up_s=give_up,
                first=encode_ack(0) if oack else None,
                proven=True,
                rtt=self._rtt,
            )
        self.machine.stats.datagrams_sent += self.stats.datagrams_sent
        self.machine.stats.retransmitted += self.stats.retransmitted
        self.stats = self.machine.stats
