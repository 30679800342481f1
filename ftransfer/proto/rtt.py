"""Round-trip time estimator and retransmission timeout (RFC 6298).

Theory of operation: each RTT sample R (taken only from a chunk transmitted
exactly once: Karn's rule, RFC 6298 section 3) updates

    first sample:  SRTT = R, RTTVAR = R / 2
    afterwards:    RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|;  SRTT = 7/8 SRTT + 1/8 R
    RTO = SRTT + max(G, 4 RTTVAR), clamped to [MIN_RTO_S, MAX_RTO_S]

Before any sample the RTO is INITIAL_RTO_S (section 2.1). A timeout doubles the
RTO (section 5.5, "back off the timer") up to MAX_RTO_S; the next sample collapses
the backoff. The minimum is 200 ms, as Linux uses, not the RFC's 1 s: links here
range from loopback to satellite and a 1 s floor makes every tail loss cost a
second. The data sender lowers the ceiling (``max_rto``) to a fifth of its give-up
time, and the session's FIN repeats use the same estimator, so they keep to it too.
``min_rtt`` (the smallest sample seen) is kept for congestion control, and
``samples`` counts the samples, so that congestion control can keep its own filter
of recent ones (BBR's standing-queue test) without counting one sample twice.
"""

from __future__ import annotations

INITIAL_RTO_S = 1.0
"""RTO before the first sample (RFC 6298 section 2.1)."""
MIN_RTO_S = 0.2
"""Floor of the RTO (Linux's TCP_RTO_MIN)."""
MAX_RTO_S = 60.0
"""Ceiling of the RTO, backoff included (RFC 6298 section 2.5)."""
GRANULARITY_S = 0.001
"""Clock granularity G: the smallest variance term."""


class RttEstimator:
    """SRTT, RTTVAR, RTO with backoff, and the minimum RTT seen."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rtt: float | None = None
        self.latest: float | None = None
        self.samples = 0
        self.max_rto = MAX_RTO_S
        """The ceiling of ``rto()``, backoff included; an owner may lower it."""
        self._backoff = 1

    def on_sample(self, rtt: float) -> None:
        """A new measurement from a chunk sent once (never from a retransmission)."""
        rtt = max(rtt, 0.0)
        self.latest = rtt
        self.samples += 1
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._backoff = 1

    def on_timeout(self) -> None:
        """A retransmission timer fired: double the RTO (up to the ceiling)."""
        if self.rto() < self.max_rto:
            self._backoff *= 2

    def reset_backoff(self) -> None:
        """New data was acknowledged: the path works, drop the timeout backoff
        (RFC 9002 section 6.2.1 resets it on any acknowledgement)."""
        self._backoff = 1

    @property
    def backoff(self) -> int:
        """Current backoff multiplier (1 when no timeout is outstanding)."""
        return self._backoff

    def rto(self) -> float:
        """The retransmission timeout, backoff included."""
        if self.srtt is None:
            base = INITIAL_RTO_S
        else:
            base = max(self.srtt + max(GRANULARITY_S, 4 * self.rttvar), MIN_RTO_S)
        return min(base * self._backoff, self.max_rto)

    def smoothed(self) -> float:
        """SRTT, or the initial RTO's worth of guess before any sample."""
        return self.srtt if self.srtt is not None else INITIAL_RTO_S
