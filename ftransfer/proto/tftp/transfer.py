"""TFTP transfers, sans-IO: what the block sender and the block receiver share.

Theory of operation
-------------------
Both ends of a TFTP transfer are one of two datagram cores (machine.py),
whoever started it:

- ``BlockSender`` (sender.py) sends a byte stream as DATA blocks, ``windowsize`` at a time
  (RFC 7440; 1 is RFC 1350's lockstep). It keeps the encoded blocks of the open
  window for retransmission, and reads the next ones from a sequential ``read(n)``.
- ``BlockReceiver`` (receiver.py) takes DATA in order, delivers each payload as ``DataReceived``
  and acks at the end of each window, on a gap, and on the final (short) block.

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
  ``request_repeated`` answers that with the first packet again. Nor does any
  ending (a give-up, an abort, an eviction) send an ERROR to an unproven peer.
- **Lost final ACK**: the receiver stays ``linger_s`` after acking the final block,
  re-acking a repeated final block, and the sender treats silence after its final
  block as a timeout like any other.
- **Transfer ids**: a datagram from any address but the peer's gets ERROR 5 sent to
  its source and changes nothing.

States are data: ``SENDER`` and ``RECEIVER`` are transition tables; the local
triggers (``accept_final``, ``abort``) raise LocalProtocolError where the table has
no entry. Failures are ``Failed(code, message)`` with ftransfer's error codes (a
peer's TFTP error code is mapped by ``error_from_tftp``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from enum import Enum

from ..._records import Record
from ...errors import (
    Exists,
    FtransferError,
    InternalError,
    NoSpace,
    NotFound,
    PermissionDenied,
    Refused,
    RemoteProtocolError,
    TransferTimeout,
)
from ..events import Completed, DataReceived, Failed
from ..machine import Machine
from ..rtt import MIN_RTO_S, RttEstimator
from .packets import (
    Error,
    ErrorCode,
    Opcode,
    Params,
    TftpPacketError,
    encode_error,
    parse_untrusted,
)

Address = tuple[str, int]
Reader = Callable[[int], bytes]
Event = DataReceived | Completed | Failed

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


def failure(error: FtransferError) -> Failed:
    """The ``Failed`` event for an error."""
    return Failed(code=error.code or InternalError.code, message=str(error))


class TftpStats(Record, frozen=False):
    """Counters for the end-of-transfer summary."""

    bytes: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    retransmitted: int = 0
    duplicates: int = 0
    timeouts: int = 0
    strangers: int = 0
    malformed: int = 0


class State(Enum):
    OFFERED = "offered"
    """Sender: OACK sent, waiting for ACK 0."""
    SENDING = "sending"
    RECEIVING = "receiving"
    STORING = "storing"
    """Receiver: the final block is in; waiting for the application's commit."""
    LINGERING = "lingering"
    """Receiver: final ACK sent; re-acking a repeated final block."""
    DONE = "done"
    FAILED = "failed"
    ERROR = "error"


class Trigger(Enum):
    OACK_ACKED = "ACK 0"
    FINAL_ACKED = "ACK of the final block"
    FINAL_BLOCK = "the short block"
    STORED = "accept_final(): committed"
    LINGER_OVER = "linger time over"
    PEER_ERROR = "ERROR received"
    BAD_DATA = "a block larger than blksize, or a size mismatch"
    GAVE_UP = "no progress for give_up_s"
    ABORT = "abort()"


S, T = State, Trigger
_ENDS: dict[Trigger, State] = {
    T.PEER_ERROR: S.FAILED,
    T.GAVE_UP: S.FAILED,
    T.ABORT: S.FAILED,
    T.BAD_DATA: S.FAILED,
}
SENDER: dict[tuple[Enum, Enum], Enum] = {
    (S.OFFERED, T.OACK_ACKED): S.SENDING,
    (S.SENDING, T.FINAL_ACKED): S.DONE,
    **{(state, trigger): nxt for state in (S.OFFERED, S.SENDING) for trigger, nxt in _ENDS.items()},
}
RECEIVER: dict[tuple[Enum, Enum], Enum] = {
    (S.RECEIVING, T.FINAL_BLOCK): S.STORING,
    (S.STORING, T.STORED): S.LINGERING,
    (S.LINGERING, T.LINGER_OVER): S.DONE,
    (S.LINGERING, T.ABORT): S.DONE,
    **{
        (state, trigger): nxt
        for state in (S.RECEIVING, S.STORING)
        for trigger, nxt in _ENDS.items()
    },
}
LOCAL = frozenset({T.STORED, T.ABORT})
_OVER = frozenset({S.DONE, S.FAILED, S.ERROR})


class Transfer:
    """What both cores share: peer binding, output, events, timers, give-up.

    Round-trip time is measured the classic way (RFC 6298 sec. 3, Karn): one block
    at a time is timed, from its first transmission to the ACK that covers it, and a
    retransmission of it cancels the measurement. That is a sample per round trip,
    at O(1) cost per block; in lockstep only every TIME_EVERY-th block is timed."""

    def __init__(
        self,
        name: str,
        table: dict[tuple[Enum, Enum], Enum],
        initial: State,
        peer: Address,
        params: Params,
        *,
        now: float,
        give_up_s: float,
        rtt: RttEstimator,
    ) -> None:
        self.machine = Machine(name, table, initial, local=LOCAL, error=S.ERROR)
        self.peer, self.params = peer, params
        self.stats = TftpStats()
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

    @property
    def state(self) -> State:
        state = self.machine.state
        assert isinstance(state, State)
        return state

    @property
    def finished(self) -> bool:
        """Over: done, failed, or broken by misuse."""
        return self.machine.state in _OVER

    def _compute_rto(self) -> float:
        return max(MIN_RTO_S, min(self._rtt.rto(), self._bound))

    def rto(self) -> float:
        return self._rto

    def _sample(self, rtt: float) -> None:
        self._rtt.on_sample(rtt)
        self._timed = None
        self._rto = self._compute_rto()

    # ---- the datagram-core API ----------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
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

    def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        """One datagram from ``addr``."""
        self.stats.datagrams_received += 1
        if addr != self.peer:
            self.stats.strangers += 1
            self._out.append((encode_error(ErrorCode.UNKNOWN_TID, "unknown transfer id"), addr))
            return
        if self.finished or len(data) < 4 or data[0]:
            self.stats.malformed += not self.finished
            return
        opcode = data[1]
        if opcode == _ACK and len(data) == 4:  # the hot paths, parsed in place
            self._on_ack(data[2] << 8 | data[3], now)
        elif opcode == _DATA:
            self._on_data(data[2] << 8 | data[3], bytes(data[4:]), now)
        elif opcode == _ERROR:
            try:
                packet = parse_untrusted(data)
            except TftpPacketError:
                packet = Error(code=ErrorCode.NOT_DEFINED, message="")
            assert isinstance(packet, Error)
            self._fail(T.PEER_ERROR, error_from_tftp(packet.code, packet.message))
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

    # ---- endings --------------------------------------------------------------------

    def _send(self, datagram: bytes) -> None:
        self._out.append((datagram, self.peer))
        self.stats.datagrams_sent += 1

    def _fail(
        self, trigger: Trigger, error: FtransferError, *, notify: tuple[int, str] | None = None
    ) -> None:
        if not self.machine.go(trigger):
            return
        if notify is not None and self.proven:
            self._send(encode_error(*notify))
        self._events.append(failure(error))

    def abort(self, code: int, message: str) -> None:
        """End the transfer from our side (no event); a peer that has proven its
        address is told why with ERROR ``code``, an unproven one hears nothing."""
        if self.finished:
            return
        lingering = self.state is S.LINGERING
        self.machine.go(T.ABORT)
        if self.proven and not lingering:
            self._send(encode_error(code, message))

    def request_repeated(self, now: float) -> None:
        """The peer sent its request again: it lost our first packet, so resend it
        (only while the peer has not yet shown it receives us)."""
        if not self.proven and not self.finished and self._first is not None:
            self._send(self._first)
            self.stats.retransmitted += 1

    def _on_give_up(self, now: float) -> None:
        seconds = self._give_up_s
        self._fail(
            T.GAVE_UP,
            TransferTimeout(f"tftp: no progress from the peer for {seconds:g} s"),
            notify=(ErrorCode.NOT_DEFINED, "timed out"),  # sent only if the peer is proven
        )

    def _on_ack(self, block: int, now: float) -> None:
        self.stats.malformed += 1

    def _on_data(self, block: int, payload: bytes, now: float) -> None:
        self.stats.malformed += 1

    def _retransmit(self, now: float) -> None:
        raise NotImplementedError
