"""Congestion control behind a small interface, chosen by name.

Theory of operation
-------------------
The sender asks two things: how many bytes may be in flight (``cwnd``) and how
fast to send (``pacing_rate``, bytes/s). It reports sends, acknowledgements (with
a delivery-rate sample, as BBR defines it: bytes delivered between a packet's send
and its ack, over that interval, restarted when a packet leaves with nothing in
flight, so idle time is never measured as a slow path), losses and timeouts.

``bbr`` (the default) models the path instead of reacting to loss, after BBR
(draft-cardwell-iccrg-bbr-congestion-control): the bottleneck bandwidth is the
maximum delivery rate of the last BW_WINDOW_ROUNDS round trips, the propagation
delay the minimum RTT; it paces at gain x bandwidth and keeps about two
bandwidth-delay products in flight. Random loss does not lower the delivery rate,
so it does not slow the sender: that is what keeps a lossy long link full where
loss-based TCP collapses. Real congestion is told apart by its second symptom, a
standing queue: a loss seen while the smallest of the last STANDING_RTT_SAMPLES RTT
samples exceeds the minimum by QUEUE_RTT_FACTOR (and by the path's jitter, see
``_queue``) cuts the in-flight cap to CONGESTION_BETA x what was in flight (as
BBRv2's inflight_hi does), never below one bandwidth-delay product plus the
ack-aggregation allowance, so the standing queue drains while the pipe stays full;
the cap creeps back up 10 % per ProbeBW cycle. The bandwidth filter itself is left
alone: single samples are too noisy to act on. So is a single RTT sample: jitter
delays datagrams independently, a queue delays them all, and a test on the latest
sample took jitter for a queue. Each false cut then fed on itself: the cap bounds the
delivery rate, hence the bandwidth estimate, hence the next cut's floor (measured:
10 % loss with 5 ms jitter at 100 Mbit/s and 40 ms ran at 3 % of the link).

Acks do not arrive as smoothly as data leaves: a receiver acks every few packets or
after a delay, and a busy receiver (Python, here) reads and acks in batches. A
window of exactly gain x BDP then stalls between batches, and the delivery-rate
samples, hence the BDP, shrink with it: measured on loopback, 16-packet windows
and 35-80 MB/s. As Linux's BBR does (``extra_acked``), the sender measures how
many bytes an ack burst delivers beyond what the bandwidth estimate predicts for
its interval, keeps the maximum over BW_WINDOW_ROUNDS rounds, and adds it to the
window (at most EXTRA_ACKED_MAX_S of bandwidth) once startup is over.

``reno`` is NewReno (RFC 6582 / RFC 5681): loss halves the window. It is here for
comparison and for paths where loss really means congestion.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from ..._records import Record
from ..rtt import RttEstimator
from .receiver import ACK_EVERY_PACKETS

INITIAL_WINDOW_PACKETS = 32
"""Packets in flight before the first ack (a LAN-friendly initial window)."""
MIN_WINDOW_PACKETS = 2 * ACK_EVERY_PACKETS
"""Never fewer than this many packets in flight. Below the receiver's ack-every count,
each round waits for its delayed-ack timer, the delivery-rate samples fall, and the
window stays at the floor: measured on loopback, 2 of 6 downloads of 64 MiB stuck at
0.9 MB/s for 75 s with a floor of 4."""
STARTUP_GAIN = 2.885
"""2/ln 2: doubles the sending rate each round trip in startup (BBR)."""
CWND_GAIN = 2.0
"""In-flight cap in bandwidth-delay products."""
PROBE_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
"""ProbeBW pacing gains, one phase per minimum RTT (BBR)."""
BW_WINDOW_ROUNDS = 10
"""The bandwidth estimate is the max delivery rate over this many rounds."""
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
"""Startup ends when the bandwidth grew by less than 25 % for three rounds."""
QUEUE_RTT_FACTOR = 1.1
QUEUE_RTT_SLACK_S = 0.001
"""An RTT above min_rtt x 1.1 + 1 ms means a queue at the bottleneck. Low on purpose:
a buffer of a quarter BDP adds only 25 % to the RTT, and a false alarm costs little,
because the cap it sets never goes below one bandwidth-delay product."""
STANDING_RTT_SAMPLES = 32
"""The queue test looks at the smallest of the last 32 RTT samples (one every ack or
so: 3-30 ms at 100 Mbit/s), not the latest: a queue delays every datagram, jitter
only some. The latest alone saw a queue in every other sample at 5 ms of jitter on
a 40 ms path, which took a 100 Mbit/s transfer with 10 % loss to 3 % of the link;
with 16 samples, 2 % of acks still saw one at 2 ms RTT (measured)."""
CONGESTION_BETA = 0.85
"""On congestion (loss with a queue) the in-flight cap becomes 0.85 x in flight."""
EXTRA_ACKED_MAX_S = 0.1
"""The ack-aggregation allowance never exceeds 100 ms of bandwidth (as Linux's BBR)."""


class RateSample(Record):
    """One delivery-rate measurement, taken when an ack arrives."""

    delivery_rate: float
    """Bytes per second delivered over the sampled interval."""
    prior_delivered: int
    """Total bytes delivered when the sampled packet was sent (for round counting)."""
    app_limited: bool
    """The sender had nothing to send: the sample may understate the path."""


class CongestionControl(Protocol):
    """What the sender needs from a congestion controller."""

    name: str

    def cwnd(self) -> int:
        """Bytes allowed in flight."""
        ...

    def pacing_rate(self) -> float:
        """Bytes per second to pace at."""
        ...

    def on_ack(
        self,
        *,
        now: float,
        acked: int,
        delivered: int,
        inflight: int,
        sample: RateSample | None,
        rtt: RttEstimator,
    ) -> None:
        """``acked`` bytes newly acknowledged; ``delivered`` is the running total."""
        ...

    def on_loss(self, *, now: float, lost: int, inflight: int, rtt: RttEstimator) -> None:
        """``lost`` bytes were declared lost."""
        ...

    def on_timeout(self, *, now: float) -> None:
        """The retransmission timer fired with nothing acknowledged."""
        ...


class _WindowedMax:
    """The maximum of the values seen in the last ``rounds`` rounds."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self._samples: list[tuple[int, float]] = []  # (round, value), values decreasing

    @property
    def value(self) -> float:
        return self._samples[0][1] if self._samples else 0.0

    def update(self, round_: int, value: float) -> float:
        """Add a sample; returns the new maximum."""
        # Keep only what a max filter needs: drop samples a later, larger one beats.
        while self._samples and self._samples[-1][1] <= value:
            self._samples.pop()
        self._samples.append((round_, value))
        while self._samples[0][0] <= round_ - self.rounds:
            self._samples.pop(0)
        return self._samples[0][1]


class _Mode(Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"


class Bbr:
    """Model-based congestion control (BBR v1 with a BBRv2-style loss response)."""

    name = "bbr"

    def __init__(self, *, mss: int) -> None:
        self.mss = mss
        self.mode = _Mode.STARTUP
        self.btl_bw = 0.0
        self._bw = _WindowedMax(BW_WINDOW_ROUNDS)
        self._round = 0
        self._next_round_delivered = 0
        self._full_bw = 0.0
        self._full_bw_rounds = 0
        self._cycle_index = 0
        self._cycle_start = 0.0
        self._inflight_cap: float | None = None
        self._min_rtt = 0.0
        self._after_timeout = False
        self._extra = _WindowedMax(BW_WINDOW_ROUNDS)
        self._epoch_start = 0.0
        self._epoch_acked = 0
        self._recent_rtt = [float("inf")] * STANDING_RTT_SAMPLES  # a ring of RTT samples
        self._recent_at = 0
        self._rtt_samples = 0  # the RttEstimator's sample count when last looked at

    def _bdp(self) -> float:
        return self.btl_bw * self._min_rtt

    def _pacing_gain(self) -> float:
        if self.mode is _Mode.STARTUP:
            return STARTUP_GAIN
        if self.mode is _Mode.DRAIN:
            return 1 / STARTUP_GAIN
        return PROBE_GAINS[self._cycle_index]

    def cwnd(self) -> int:
        if self.btl_bw <= 0 or self._min_rtt <= 0:
            window = float(INITIAL_WINDOW_PACKETS * self.mss)
        else:
            gain, extra = STARTUP_GAIN, 0.0
            if self.mode is not _Mode.STARTUP:  # in startup the estimate lags: every ack is "extra"
                gain, extra = CWND_GAIN, self._extra_acked()
            window = gain * self._bdp() + 3 * self.mss + extra
        if self._inflight_cap is not None:
            window = min(window, self._inflight_cap)
        if self._after_timeout:
            window = 0.0
        return int(max(window, MIN_WINDOW_PACKETS * self.mss))

    def pacing_rate(self) -> float:
        if self.btl_bw <= 0:
            rtt = self._min_rtt if self._min_rtt > 0 else 0.001
            return STARTUP_GAIN * INITIAL_WINDOW_PACKETS * self.mss / rtt
        return self._pacing_gain() * self.btl_bw

    def on_ack(
        self,
        *,
        now: float,
        acked: int,
        delivered: int,
        inflight: int,
        sample: RateSample | None,
        rtt: RttEstimator,
    ) -> None:
        if rtt.min_rtt:
            self._min_rtt = rtt.min_rtt
        if rtt.samples != self._rtt_samples and rtt.latest is not None:  # a new sample
            self._rtt_samples = rtt.samples
            self._recent_rtt[self._recent_at] = rtt.latest
            self._recent_at = (self._recent_at + 1) % STANDING_RTT_SAMPLES
        if sample is None:
            return
        self._after_timeout = False  # data is moving again: the model still holds
        new_round = sample.prior_delivered >= self._next_round_delivered
        if new_round:
            self._end_round(delivered)
        self._update_bandwidth(sample)
        self._update_ack_aggregation(now, acked)
        self._update_mode(now, inflight, new_round)

    def _end_round(self, delivered: int) -> None:
        self._round += 1
        self._next_round_delivered = delivered

    def _standing_rtt(self) -> float:
        """The smallest of the last STANDING_RTT_SAMPLES RTT samples (inf before any)."""
        return min(self._recent_rtt)

    def _queue(self, rtt: RttEstimator) -> bool:
        """A standing queue at the bottleneck: the smallest recent RTT is above the
        minimum by 10 % + 1 ms and by more than the jitter that taking a minimum does
        not remove, which is of the order of how far the smoothed RTT sits above it
        (no allowance on a path without jitter; with 5 ms of jitter each way the
        minimum of 32 samples sits 1 ms above the floor in the median, 2.6 ms in
        1 % of windows: more than the 1.2 ms slack of a 2 ms path)."""
        standing = self._standing_rtt()
        if self._min_rtt <= 0 or standing == float("inf"):
            return False
        jitter = max((rtt.srtt or 0.0) - standing, 0.0)
        return standing > QUEUE_RTT_FACTOR * self._min_rtt + QUEUE_RTT_SLACK_S + jitter

    def _update_bandwidth(self, sample: RateSample) -> None:
        if sample.app_limited and sample.delivery_rate < self.btl_bw:
            return
        self.btl_bw = self._bw.update(self._round, sample.delivery_rate)

    def _update_ack_aggregation(self, now: float, acked: int) -> None:
        """BBR's extra_acked: bytes acked beyond bw x the time since the epoch began;
        an epoch restarts whenever the acks fall back to the expected pace."""
        expected = self.btl_bw * (now - self._epoch_start)
        if self._epoch_acked <= expected:
            self._epoch_start, self._epoch_acked, expected = now, 0, 0.0
        self._epoch_acked += acked
        self._extra.update(self._round, self._epoch_acked - expected)

    def _extra_acked(self) -> float:
        return min(self._extra.value, self.btl_bw * EXTRA_ACKED_MAX_S)

    def _update_mode(self, now: float, inflight: int, new_round: bool) -> None:
        if self.mode is _Mode.STARTUP and new_round:
            if self.btl_bw >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw, self._full_bw_rounds = self.btl_bw, 0
            else:
                self._full_bw_rounds += 1
                if self._full_bw_rounds >= FULL_BW_ROUNDS:
                    self.mode = _Mode.DRAIN
        if self.mode is _Mode.DRAIN and inflight <= self._bdp():
            self.mode, self._cycle_start, self._cycle_index = _Mode.PROBE_BW, now, 0
        if self.mode is _Mode.PROBE_BW and now - self._cycle_start > max(self._min_rtt, 0.001):
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_GAINS)
            self._cycle_start = now
            if self._inflight_cap is not None and self._cycle_index == 0:
                self._inflight_cap *= 1.1  # probe back up after a congestion cut

    def on_loss(self, *, now: float, lost: int, inflight: int, rtt: RttEstimator) -> None:
        if self._queue(rtt):
            # Loss *and* a queue: congestion. Bound what is in flight, but never below
            # one bandwidth-delay product plus the ack-aggregation allowance (what a
            # window of gain 1 holds): the queue drains, the pipe stays full, also when
            # jitter holds acks back (without it: 81 % instead of 89 % of the link at
            # 10 % loss, 5 ms jitter, 2 ms RTT, measured).
            floor = max(self._bdp() + self._extra_acked(), MIN_WINDOW_PACKETS * self.mss)
            cap = max(inflight * CONGESTION_BETA, floor)
            if self._inflight_cap is not None:
                cap = max(min(self._inflight_cap, cap), floor)
            self._inflight_cap = cap
            if self.mode is _Mode.STARTUP:
                self.mode = _Mode.DRAIN

    def on_timeout(self, *, now: float) -> None:
        # Until something is delivered again, probe with the minimum window; the
        # bandwidth model is kept, so a blackhole that ends resumes at full rate.
        self._after_timeout = True


class NewReno:
    """Loss-based AIMD: slow start, congestion avoidance, halve on loss."""

    name = "reno"

    def __init__(self, *, mss: int) -> None:
        self.mss = mss
        self._cwnd = float(INITIAL_WINDOW_PACKETS * mss)
        self._ssthresh = float("inf")
        self._recovery_until = -1.0
        self._srtt = 0.0

    def cwnd(self) -> int:
        return int(max(self._cwnd, MIN_WINDOW_PACKETS * self.mss))

    def pacing_rate(self) -> float:
        return 1.25 * self._cwnd / max(self._srtt, 0.001)

    def on_ack(
        self,
        *,
        now: float,
        acked: int,
        delivered: int,
        inflight: int,
        sample: RateSample | None,
        rtt: RttEstimator,
    ) -> None:
        self._srtt = rtt.smoothed()
        if self._cwnd < self._ssthresh:
            self._cwnd += acked
        else:
            self._cwnd += self.mss * acked / self._cwnd

    def on_loss(self, *, now: float, lost: int, inflight: int, rtt: RttEstimator) -> None:
        if now < self._recovery_until:
            return  # one reduction per round trip of losses
        self._cwnd = max(self._cwnd / 2, MIN_WINDOW_PACKETS * self.mss)
        self._ssthresh = self._cwnd
        self._recovery_until = now + rtt.smoothed()

    def on_timeout(self, *, now: float) -> None:
        self._ssthresh = max(self._cwnd / 2, MIN_WINDOW_PACKETS * self.mss)
        self._cwnd = float(MIN_WINDOW_PACKETS * self.mss)


ALGORITHMS: dict[str, type[Bbr] | type[NewReno]] = {"bbr": Bbr, "reno": NewReno}
"""Congestion controllers by name (``--cc``)."""


def create(name: str, *, mss: int) -> CongestionControl:
    """A congestion controller by name; KeyError if unknown."""
    return ALGORITHMS[name](mss=mss)
