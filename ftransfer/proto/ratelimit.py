"""Rate limits: token buckets on a caller's clock, shared by every transport.

Theory of operation
-------------------
A ``TokenBucket`` holds up to ``burst`` bytes of credit and earns ``rate`` bytes
of it per second. A sender *takes* what it has just sent and is told how long to
wait before it sends again: the credit may go negative (a 4 MiB TCP frame or a
burst of datagrams goes out whole), and the wait is the time the debt takes to
repay. Over any long interval the bytes sent are therefore at most
``rate * interval + burst`` plus the last write: with the default burst of
1/20 s of the rate, a limit holds within 0.5 % over 10 s (plus a write: a 4 MiB
TCP frame is 2 % of 10 s at 20 MB/s), and a transfer starts at once (its first
``burst`` bytes are not delayed).

Nothing here reads a clock or sleeps: the caller passes ``now`` (time.monotonic,
the loop's time, or the simulator's virtual time) and does the waiting (a TCP
client sleeps, a UDP pacer moves its next send, a server's loop schedules).
Several limits apply at once through ``Limits``: a connection's own bucket and the
server's total, one ``take`` charging both, the wait the longest of theirs. A
bucket shared by several connections charges each send as it comes, so they
share the rate in the order they send.
"""

from __future__ import annotations

MIN_BURST_BYTES = 4096
"""A bucket's burst is at least this (a datagram or a small frame goes at once; a
larger write is not held back either: it makes a debt)."""
BURST_S = 0.05
"""And at least this long at its rate."""


class TokenBucket:
    """``rate`` bytes per second, with ``burst`` bytes of credit (see the module)."""

    def __init__(self, rate: float, *, now: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"a rate limit must be positive, not {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(MIN_BURST_BYTES, rate * BURST_S)
        self._credit = self.burst
        self._at = now

    def take(self, nbytes: int, now: float) -> float:
        """``nbytes`` were sent at ``now``: seconds to wait before sending more."""
        if now > self._at:
            self._credit = min(self.burst, self._credit + (now - self._at) * self.rate)
            self._at = now
        self._credit -= nbytes
        return 0.0 if self._credit >= 0 else -self._credit / self.rate

    def wait(self, now: float) -> float:
        """Seconds until the debt is repaid (0 if there is none), taking nothing."""
        return self.take(0, now)


class Limits:
    """Several buckets charged together (a connection's and the server's total)."""

    def __init__(self, *buckets: TokenBucket) -> None:
        self.buckets = buckets

    @property
    def rate(self) -> float:
        """The tightest rate: what a pacer should aim at."""
        return min(bucket.rate for bucket in self.buckets)

    def take(self, nbytes: int, now: float) -> float:
        return max(bucket.take(nbytes, now) for bucket in self.buckets)

    def wait(self, now: float) -> float:
        return max(bucket.wait(now) for bucket in self.buckets)


FRAME_S = 0.25
"""Under a limit, a TCP frame holds at most this long of the rate (and at least
MIN_FRAME_BYTES): a peer waiting for the next frame never waits long."""
MIN_FRAME_BYTES = 16 * 1024


def frame_bytes(limit: TokenBucket | Limits | None, largest: int) -> int:
    """The largest frame to send under ``limit`` (``largest`` without one)."""
    if limit is None:
        return largest
    return max(MIN_FRAME_BYTES, min(largest, int(limit.rate * FRAME_S)))


def limits(*buckets: TokenBucket | None) -> Limits | None:
    """The buckets that are set, together; None if there is none."""
    present = [bucket for bucket in buckets if bucket is not None]
    return Limits(*present) if present else None


def bucket(rate: float | None, now: float) -> TokenBucket | None:
    """A bucket for a limit that may be unset (None or 0: no limit)."""
    return TokenBucket(rate, now=now) if rate else None
