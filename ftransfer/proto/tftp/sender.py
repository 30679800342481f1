"""TFTP block sender (sans-IO): a byte stream out as DATA blocks, a window at a time.

Theory of operation
-------------------
``BlockSender`` is the sending end of a TFTP transfer, whoever started it (the
server answering an RRQ, the client putting a file): it sends ``windowsize``
blocks (RFC 7440; 1 is RFC 1350's lockstep), keeps the encoded blocks of the open
window for retransmission, and reads the next ones ahead from a sequential
``read(n)`` while the peer works. What both ends share (peer binding, timers, the
give-up, no retransmission to an unproven peer, the state table) is
``transfer.Transfer``; the rules are in that module's docstring.
"""

from __future__ import annotations

import collections

from ...errors import InternalError
from ..events import Completed
from ..rtt import RttEstimator
from .packets import Params, encode_data
from .transfer import (
    SENDER,
    TIME_EVERY,
    Address,
    Reader,
    S,
    T,
    Transfer,
)


class BlockSender(Transfer):
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
        initial = S.OFFERED if oack is not None else S.SENDING
        super().__init__(
            "tftp sender",
            SENDER,
            initial,
            peer,
            params,
            now=now,
            give_up_s=give_up_s,
            rtt=rtt or RttEstimator(),
        )
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
        if acked < 0:
            self.machine.go(T.OACK_ACKED)
        unacked = self._unacked
        for _ in range(block - max(acked, 0)):
            unacked.popleft()
        self._acked = block
        self.proven = True
        self._give_up_at = now + self._give_up_s
        if self._final is not None and block >= self._final:
            self.machine.go(T.FINAL_ACKED)
            self._retry_at = None
            self._events.append(Completed())
            return
        self._send_window(now)
