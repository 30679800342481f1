"""TFTP block receiver (sans-IO): DATA blocks in, in order, acked per window.

Theory of operation
-------------------
``BlockReceiver`` is the receiving end of a TFTP transfer (the server taking a
WRQ, the client getting a file): it delivers each in-order payload as
``DataReceived``, acks the last block of each window, the final (short) block
and, at once, the last in-order block when it sees a gap, re-acks a repeated
block at most once per gap and per REACK_GAP_S, and lingers after the final ACK to
answer a repeated final block. The final ACK of an upload waits for
``accept_final`` (the commit). The shared rules are in ``transfer.py``.
"""

from __future__ import annotations

from ...errors import IntegrityError, RemoteProtocolError
from ..events import Completed, DataReceived
from ..rtt import RttEstimator
from .packets import ErrorCode, Params, encode_ack
from .transfer import (
    REACK_GAP_S,
    RECEIVER,
    TIME_EVERY,
    Address,
    S,
    T,
    Transfer,
)


class BlockReceiver(Transfer):
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
        super().__init__(
            "tftp receiver",
            RECEIVER,
            S.RECEIVING,
            peer,
            params,
            now=now,
            give_up_s=give_up_s,
            rtt=rtt or RttEstimator(),
        )
        self._blksize, self._window = params.blksize, params.windowsize
        self._limit = params.tsize
        self._linger_s = linger_s
        self._expected = 1
        self._since_ack = 0
        self._last_ack_at = now
        self._reacked = False
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
        state = self.machine.state
        if wire == expected & 0xFFFF and state is S.RECEIVING:
            if len(payload) <= self._blksize:
                self._on_in_order(payload, now)
                return
            message = f"block of {len(payload)} bytes exceeds blksize {self._blksize}"
            self.proven = True
            self._fail(
                T.BAD_DATA,
                RemoteProtocolError(message),
                notify=(ErrorCode.ILLEGAL_OPERATION, message),
            )
            return
        self.stats.duplicates += 1
        if state is S.LINGERING:
            if wire == (expected - 1) & 0xFFFF:
                self._send(encode_ack(wire))  # our final ACK was lost
            return
        if state is S.STORING:
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
            self._fail(T.BAD_DATA, IntegrityError(message), notify=(ErrorCode.NOT_DEFINED, message))
            return
        self._events.append(DataReceived(data=payload, final=final))
        if final:
            self.machine.go(T.FINAL_BLOCK)
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
        self.machine.go(T.STORED)
        self._ack(now)
        self._events.append(Completed())
        self._retry_at = None
        if self._linger_s > 0:
            self._give_up_at = now + self._linger_s
        else:
            self.machine.go(T.LINGER_OVER)

    def _on_give_up(self, now: float) -> None:
        state = self.state
        if state is S.LINGERING:
            self.machine.go(T.LINGER_OVER)
        elif state is S.STORING:  # the commit is slow, not the peer
            self._give_up_at = now + self._give_up_s
        else:
            super()._on_give_up(now)

    def _retransmit(self, now: float) -> None:
        if self.state is S.RECEIVING:
            self._ack(now)
            self.stats.retransmitted += 1
            self._retry_at = now + self._rto
