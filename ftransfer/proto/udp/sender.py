"""Selective-repeat sender: window, in-flight table, SACK processing, loss detection.

Theory of operation
-------------------
A file is cut into chunks numbered 0..n-1 (``seq``); a retransmission reuses its
chunk's number. Each transmission also gets a private, increasing transmission
number (``tx``) that orders sends for loss detection. ``_inflight`` maps seq to
its latest transmission and, being a dict, iterates in transmission order.

On an ACK (cumulative point + SACK ranges + receiver window):
- anything at or beyond the next never-sent chunk is ignored: an ack for data
  never sent neither counts nor opens the window;
- each newly acknowledged chunk leaves the in-flight table once: the cumulative
  part walks forward from the old point, the SACK part only over ranges not seen
  before (``RangeSet.add_new``), so a chunk costs O(1) however often it is re-acked;
- an RTT sample is taken from the newest acknowledged chunk only if it was sent
  once (Karn's rule); a delivery-rate sample (BBR) feeds congestion control,
  over an interval that a send into an empty pipe restarts, so that no sample
  spans time with nothing in flight (the pacer's wait, a stalled read);
- loss detection needs no such rule: every DATA carries its transmission number
  and every ACK echoes the largest one received, so "something sent 3 transmissions
  later has arrived" is known exactly, for retransmissions too (as QUIC's packet
  numbers do). Crediting an ack of a retransmitted chunk to its latest transmission
  instead declared whole flights lost at once: measured 90 % duplicates at 10 % loss;
- a chunk is lost when a chunk sent 3 transmissions later is acknowledged, or when
  it was sent more than 9/8 RTT before the newest acknowledged one (RFC 9002
  section 6.1); lost chunks queue for retransmission, lowest first;
- reordering is learned from spurious retransmissions, found as DSACK would find
  them: a retransmission acknowledged by an ACK whose largest transmission number
  is below the retransmission's, or sooner than 0.8 min RTT after it was sent, was
  delivered by its original. Each raises the packet threshold to the distance seen
  and, once per round trip, widens the time window to RTT + k x min_rtt / 4 (RFC
  8985 section 6.2), bounded by one smoothed RTT only: datagrams delayed
  independently by up to 5 ms (a relay's jitter) arrive 40 deep out of order at
  100 Mbit/s, and by more than the 2 ms round trip of a short path. Deep
  reordering thus costs no retransmissions once learned, and it never slows the
  sender: congestion control sees a loss only where RACK declares one, and BBR
  takes a loss for congestion only with a standing queue (congestion.py).

A duplicate ACK carries nothing new and changes nothing: no retransmission storm.

The retransmission timer (RFC 6298 section 5) runs while data is in flight and
restarts when new data is acknowledged; when it fires, the whole flight counts as
lost (RFC 6675 section 5.1), retransmission restarts from the lowest chunk, and the
RTO doubles. Before that, a tail-loss probe (RFC 8985 section 7) resends the
newest chunk in flight once after two smoothed RTTs without progress, so a lost
last chunk costs about two RTTs, not an RTO. With no progress for ``give_up_s`` the
sender fails with a timeout. Sending is paced at the congestion controller's rate
in bursts of BURST_PACKETS datagrams, or of BURST_S worth of the pacing rate when
that is more (as Linux sizes TSO bursts), at most MAX_BURST_PACKETS: at 100 Mbit/s
a burst is 16 datagrams, on loopback 44, which one GSO call carries. A rate limit
(``limits``: the client's, the server's per session, the server's total) caps the
pacing rate and charges every burst to its buckets; a bucket in debt holds the
next burst back until the debt is repaid.
"""

from __future__ import annotations

import heapq

from ..._records import Record
from ..ratelimit import Limits
from ..rtt import RttEstimator
from .congestion import CongestionControl, RateSample
from .packets import Ack
from .rangeset import RangeSet

LOSS_PACKET_THRESHOLD = 3
"""Transmissions after a chunk that may arrive before it counts as lost (RFC 9002);
the starting value of an adaptive threshold, raised when reordering is observed."""
MAX_REORDER_THRESHOLD = 4096
"""Ceiling of the adaptive packet threshold (the time threshold still applies)."""
GIVE_UP_PROBES = 5
"""The backed-off RTO never exceeds give_up_s / this."""
SPURIOUS_RTT_FRACTION = 0.8
"""An ack this soon (x min RTT) after a retransmission is for the original (Eifel)."""
LOSS_TIME_THRESHOLD = 9 / 8
"""A chunk older than this many RTTs behind an acknowledged one is lost (RFC 9002),
until reordering is observed; then the RACK window below takes over."""
MAX_REORDER_STEPS = 255
"""RACK (RFC 8985 section 6.2): each round trip that reveals a spurious retransmission
widens the reordering window by min_rtt / 4, up to this many steps and at most one
smoothed RTT, which is the real bound (255 as Linux's reo_wnd_steps). It was 4, so
at most one min_rtt: 5 ms of jitter on a 2 ms path reorders by up to 5 ms, and a
fifth to a quarter of the file was resent for nothing, at 29 % of the link
(measured)."""
BURST_PACKETS = 16
"""Datagrams released at once before the pacer waits (at least)."""
BURST_S = 0.001
MAX_BURST_PACKETS = 44
"""Bursts grow to 1 ms of the pacing rate, up to what one GSO send carries (65,000
bytes of 1,434-byte datagrams): each burst costs a wake-up of the event loop."""
PROBE_ACK_DELAY_S = 0.005
"""The peer's ack delay allowance in the tail-loss probe timeout (its MAX_ACK_DELAY_S)."""


class _Sent(Record, frozen=False):
    tx: int
    sent_at: float
    size: int
    delivered: int
    delivered_at: float
    first_sent_at: float
    app_limited: bool
    retransmitted: bool
    reordering: int = 0
    """For a retransmission: how far behind the newest arrival the original was
    when it was declared lost (the reordering we learn of if it was not lost)."""


class SenderStats(Record, frozen=False):
    sent: int = 0
    retransmitted: int = 0
    spurious: int = 0
    acks: int = 0
    bytes_sent: int = 0


class Sender:
    """Sends chunks 0..n-1 of ``size`` bytes reliably, as fast as the path allows."""

    def __init__(
        self,
        *,
        size: int,
        chunk_bytes: int,
        window: int,
        cc: CongestionControl,
        rtt: RttEstimator,
        now: float,
        give_up_s: float,
        limits: Limits | None = None,
    ) -> None:
        """``limits``: rate limits (proto/ratelimit.py) the pacer keeps to, besides
        congestion control's rate."""
        self.size, self.chunk_bytes = size, chunk_bytes
        self.limits = limits
        self.chunks = -(-size // chunk_bytes)
        self.peer_window = window
        self.cc, self.rtt, self.give_up_s = cc, rtt, give_up_s
        # The RTO, backoff included, is at most a fifth of the give-up time: a path
        # that comes back is probed several more times before the sender gives up.
        # Set on the estimator, so that the session's FIN repeats keep to it too:
        # backing off to 3.2 s, five lost RESULTs in a row outlasted a 10 s give-up
        # (measured: 2-3 of 400 1 MiB transfers at 10 % loss with every impairment).
        rtt.max_rto = min(rtt.max_rto, give_up_s / GIVE_UP_PROBES)
        self.stats = SenderStats()
        self.failed = False
        self._next_new = 0
        self._inflight: dict[int, _Sent] = {}
        self._lost: list[int] = []
        self._acked_below = 0
        self._sacked = RangeSet()
        self._tx = 0
        self._largest_acked_tx = -1
        self._delivered = 0
        self._delivered_at = now
        self._first_sent_at = now  # send time of the newest chunk delivered
        self._bytes_in_flight = 0
        self._next_send_at = now
        self._progress_at = now
        self._rto_base = now
        self._probe: int | None = None
        self._probed = False
        self._reorder_threshold = LOSS_PACKET_THRESHOLD
        self._reorder_steps = 0
        self._reorder_step_at = -1.0
        self._declared: dict[int, int] = {}  # seq -> reordering distance when declared lost

    @property
    def done(self) -> bool:
        """Every chunk is acknowledged."""
        return self._acked_below >= self.chunks

    @property
    def bytes_in_flight(self) -> int:
        return self._bytes_in_flight

    # ---- sending ------------------------------------------------------------------------

    def poll(self, now: float) -> list[tuple[int, int, int]]:
        """(chunk, transmission number, size) of what to send now (recorded as sent
        at ``now``)."""
        out: list[tuple[int, int, int]] = []
        if now < self._next_send_at or self.failed:
            return out
        limits = self.limits
        if limits is not None and (wait := limits.wait(now)) > 0:
            self._next_send_at = now + wait  # (a rate limit's debt, shared or ours)
            return out
        burst_bytes = 0
        probe, self._probe = self._probe, None
        probed = 0
        if probe is not None and probe in self._inflight:  # not held back by the window
            size = probed = self._inflight.pop(probe).size
            self._bytes_in_flight -= size
            out.append((probe, self._tx, size))
            self._record(probe, size, now, True)
        cwnd, rate = self.cc.cwnd(), max(self.cc.pacing_rate(), 1.0)
        if limits is not None:
            # Under a rate limit, pace at the limit while the path's estimated
            # bandwidth allows it: BBR's gain cycle (0.75 between probes) would
            # otherwise keep a limited sender some 6 % under its limit.
            rate = min(max(rate, getattr(self.cc, "btl_bw", 0.0)), limits.rate)
        burst = min(max(BURST_PACKETS, int(rate * BURST_S / self.chunk_bytes)), MAX_BURST_PACKETS)
        chunk_bytes, total = self.chunk_bytes, self.size
        while len(out) < burst and self._bytes_in_flight + chunk_bytes <= cwnd:
            seq, again = self._next_chunk()
            if seq is None:
                break
            size = min(chunk_bytes, total - seq * chunk_bytes)
            out.append((seq, self._tx, size))
            self._record(seq, size, now, again)
            burst_bytes += size
        if out:
            start = max(self._next_send_at, now - 0.001)
            self._next_send_at = start + burst_bytes / rate
            if limits is not None:
                sent = burst_bytes + probed
                wait = limits.take(sent, now)
                if rate >= limits.rate:  # the limit binds: its bucket paces, which
                    # makes up for a late wake-up (the credit it earned meanwhile)
                    self._next_send_at = now + wait
                else:
                    self._next_send_at = max(self._next_send_at, now + wait)
        return out

    def _next_chunk(self) -> tuple[int | None, bool]:
        while self._lost:
            seq = heapq.heappop(self._lost)
            if seq >= self._acked_below and seq not in self._sacked and seq not in self._inflight:
                return seq, True
        if self._next_new < self.chunks and self._next_new < self._acked_below + self.peer_window:
            self._next_new += 1
            return self._next_new - 1, False
        return None, False

    def _record(self, seq: int, size: int, now: float, again: bool) -> None:
        if not self._inflight:
            self._rto_base = now
            # Nothing in flight: the next delivery interval starts now, not at the last
            # ack, as BBR's rate estimator does on sending (draft-cheng-iccrg-delivery-
            # rate-estimation; Linux's tcp_rate_skb_sent). Else a sample spans the time
            # the pipe stood empty and measures the sender's idling, not the path. On a
            # short path whose window is one burst, acked long before the pacer's next,
            # that pinned BBR: one low sample (a 50 ms stall in the first read) put the
            # window at its floor, and from then on every sample was 16 datagrams over
            # the 8-16 ms the blocking client's timer sleeps for a 1-2 ms wait, 1-3 MB/s
            # whatever the estimate (measured: a 20 MB put on loopback took 14-20 s).
            self._delivered_at = self._first_sent_at = now
        self._inflight[seq] = _Sent(
            tx=self._tx,
            sent_at=now,
            size=size,
            delivered=self._delivered,
            delivered_at=self._delivered_at,
            first_sent_at=self._first_sent_at,
            app_limited=self._next_new >= self.chunks,
            retransmitted=again,
            reordering=self._declared.pop(seq, 0) if again else 0,
        )
        self._tx += 1
        self._bytes_in_flight += size
        self.stats.sent += 1
        self.stats.bytes_sent += size
        if again:
            self.stats.retransmitted += 1

    # ---- acknowledgements ----------------------------------------------------------------

    def on_ack(self, ack: Ack, now: float) -> None:
        """Process an acknowledgement from the receiver."""
        self.stats.acks += 1
        self.peer_window = ack.window
        # The receiver echoes the largest transmission number it has seen; one never
        # sent (a forged ack) is clamped to what was sent.
        self._largest_acked_tx = max(self._largest_acked_tx, min(ack.largest_tx, self._tx - 1))
        horizon = self._next_new  # nothing at or beyond this was ever sent
        newly: list[_Sent] = []
        cumulative = min(ack.cumulative, horizon)
        for seq in range(self._acked_below, cumulative):
            self._take(seq, newly)
        if cumulative > self._acked_below:
            self._acked_below = cumulative
            self._sacked.discard_below(cumulative)
        for start, stop in ack.ranges:
            start, stop = max(start, self._acked_below), min(stop, horizon)
            if start < stop:
                for a, b in self._sacked.add_new(start, stop):
                    for seq in range(a, b):
                        self._take(seq, newly)
        if newly:
            self._learn_reordering(newly, ack.largest_tx, now)
            self._on_delivered(newly, ack.delay_us / 1e6, now)
        self._detect_losses(now)

    def _take(self, seq: int, newly: list[_Sent]) -> None:
        sent = self._inflight.pop(seq, None)
        if sent is not None:
            self._bytes_in_flight -= sent.size
            newly.append(sent)

    def _learn_reordering(self, newly: list[_Sent], largest_tx: int, now: float) -> None:
        """Spurious-retransmission detection, what DSACK tells a TCP sender (RFC 3708):
        a retransmission acknowledged by an ACK whose largest transmission number is
        below its own was delivered by the original, since the receiver had not seen
        the retransmission yet; and one acknowledged sooner than a round trip allows
        was too (the Eifel idea, RFC 3522). Either way the chunk was reordered, not
        lost, so the thresholds grow to cover that reordering."""
        floor = SPURIOUS_RTT_FRACTION * (self.rtt.min_rtt or 0.0)
        for sent in newly:
            if not (sent.retransmitted and sent.reordering):
                continue
            if largest_tx < sent.tx or now - sent.sent_at < floor:
                self.stats.spurious += 1
                wanted = min(sent.reordering + LOSS_PACKET_THRESHOLD, MAX_REORDER_THRESHOLD)
                self._reorder_threshold = max(self._reorder_threshold, wanted)
                self._widen_reorder_window(now)

    def _widen_reorder_window(self, now: float) -> None:
        """A packet threshold alone does not help when the time threshold fires first
        (5-15 ms of reordering on a 40 ms path): widen the time window too, once per
        round trip, as RACK does."""
        if now - self._reorder_step_at >= (self.rtt.srtt or 0.0):
            self._reorder_steps = min(self._reorder_steps + 1, MAX_REORDER_STEPS)
            self._reorder_step_at = now

    def _on_delivered(self, newly: list[_Sent], ack_delay: float, now: float) -> None:
        # Progress: forget the timeout backoff even when every chunk acknowledged was a
        # retransmission (no RTT sample by Karn's rule), or a tail of retransmissions
        # would wait ever longer, each timeout doubling the next.
        self.rtt.reset_backoff()
        newest = max(newly, key=lambda s: s.tx)
        if not newest.retransmitted:  # Karn: never sample a retransmitted chunk
            sample = now - newest.sent_at
            min_rtt = self.rtt.min_rtt or 0.0
            self.rtt.on_sample(sample - ack_delay if sample - ack_delay >= min_rtt else sample)
        acked = sum(s.size for s in newly)
        self._delivered += acked
        self._delivered_at = now
        self._progress_at = self._rto_base = now
        self._probed = False
        # Delivery rate over the longer of the send and the ack intervals (BBR's rate
        # estimator): acks compressed into one burst would otherwise report a rate far
        # above the link's, which the max filter then keeps for ten rounds (measured:
        # a 9 MB window on a 12.5 MB/s path once bursts grew to 44 datagrams).
        send_elapsed = newest.sent_at - newest.first_sent_at
        interval = max(now - newest.delivered_at, send_elapsed, 1e-6)
        self._first_sent_at = newest.sent_at
        rate = RateSample(
            delivery_rate=(self._delivered - newest.delivered) / interval,
            prior_delivered=newest.delivered,
            app_limited=newest.app_limited,
        )
        self.cc.on_ack(
            now=now,
            acked=acked,
            delivered=self._delivered,
            inflight=self._bytes_in_flight,
            sample=rate,
            rtt=self.rtt,
        )

    def _loss_delay(self) -> float:
        rtt = max(self.rtt.srtt or 0.0, self.rtt.latest or 0.0, 0.001)
        if not self._reorder_steps:
            return LOSS_TIME_THRESHOLD * rtt
        window = self._reorder_steps * (self.rtt.min_rtt or rtt) / 4
        return rtt + min(window, self.rtt.srtt or rtt)

    def _detect_losses(self, now: float) -> None:
        delay = self._loss_delay()
        lost: list[int] = []
        for seq, sent in self._inflight.items():
            if sent.tx >= self._largest_acked_tx:
                break
            behind = self._largest_acked_tx - sent.tx >= self._reorder_threshold
            if not (behind or now - sent.sent_at >= delay):
                break  # later entries were sent later still: none of them is lost yet
            lost.append(seq)
        if lost:
            self._declare_lost(lost, now)

    def resend_unseen_flight(self, now: float) -> None:
        """The peer repeated its request: it never got our ACCEPT, so it dropped the
        data of a session it did not know. Before any ack, everything in flight is
        therefore gone; send it again now instead of after a blind first RTO (1 s).
        Not congestion: the window is left alone. A duplicated INITIAL arriving
        late costs at most one initial window of extra sends."""
        if self.stats.acks or not self._inflight:
            return
        for seq, sent in self._inflight.items():
            self._bytes_in_flight -= sent.size
            heapq.heappush(self._lost, seq)
        self._inflight.clear()
        self._rto_base = self._next_send_at = now
        # Nor is the wait a delivery interval: a rate sample over it (seconds, when
        # the client's INITIAL was lost too) set the pacing rate to a few kB/s, and
        # the next burst was due after the give-up time (measured: 1 in 200 GETs at
        # 10 % loss with every impairment timed out so).
        self._delivered_at = self._first_sent_at = now

    def _declare_lost(self, lost: list[int], now: float) -> None:
        lost_bytes = 0
        for seq in lost:
            sent = self._inflight.pop(seq)
            self._declared[seq] = max(self._largest_acked_tx - sent.tx, 0)
            self._bytes_in_flight -= sent.size
            lost_bytes += sent.size
            heapq.heappush(self._lost, seq)
        self.cc.on_loss(now=now, lost=lost_bytes, inflight=self._bytes_in_flight, rtt=self.rtt)

    # ---- timers --------------------------------------------------------------------------

    def _loss_deadline(self) -> float | None:
        """When the oldest chunk in flight becomes lost by time, if something sent
        after it has arrived (only the oldest matters: the others were sent later)."""
        oldest = next(iter(self._inflight.values()), None)
        if oldest is None or oldest.tx >= self._largest_acked_tx:
            return None
        return oldest.sent_at + self._loss_delay()

    def _rto(self) -> float:
        """The RTO, backoff included (at most a fifth of the give-up time)."""
        return self.rtt.rto()

    def _probe_deadline(self) -> float | None:
        """Tail-loss probe (RFC 8985 section 7): two RTTs without progress, before the RTO."""
        if self._probed or not self._inflight or self.rtt.srtt is None:
            return None
        return self._rto_base + 2 * self.rtt.srtt + PROBE_ACK_DELAY_S

    def _can_send(self) -> bool:
        if self._bytes_in_flight + self.chunk_bytes > self.cc.cwnd():
            return False
        if self._lost:
            return True
        return self._next_new < min(self.chunks, self._acked_below + self.peer_window)

    def get_timer(self) -> float | None:
        """The next moment ``handle_timer`` has work, or None."""
        if self.done or self.failed:
            return None
        deadlines = [self._progress_at + self.give_up_s]
        if self._inflight:
            deadlines.append(self._rto_base + self._rto())
            loss = self._loss_deadline()
            if loss is not None:
                deadlines.append(loss)
            probe = self._probe_deadline()
            if probe is not None:
                deadlines.append(probe)
        if self._can_send() or self._probe is not None:
            deadlines.append(self._next_send_at)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Run the loss, retransmission and give-up timers that are due."""
        if self.done or self.failed:
            return
        if now >= self._progress_at + self.give_up_s:
            self.failed = True
            return
        loss = self._loss_deadline()
        probe = self._probe_deadline()
        if loss is not None and now >= loss:
            self._detect_losses(now)
        elif self._inflight and now >= self._rto_base + self._rto():
            # Nothing acknowledged for an RTO: count the whole flight as lost (as TCP
            # does after a timeout, RFC 6675 section 5.1), so the retransmissions are
            # not blocked by stale bytes in flight; they go out lowest first.
            self.rtt.on_timeout()
            self.cc.on_timeout(now=now)
            self._reorder_threshold = LOSS_PACKET_THRESHOLD  # the path changed: relearn
            self._reorder_steps = 0
            self._declare_lost(list(self._inflight), now)
            self._rto_base = now
            self._next_send_at = now
        elif probe is not None and now >= probe:
            # Resend the newest chunk in flight: its ack (carrying a larger transmission
            # number) lets ordinary loss detection find what else is missing.
            self._probed = True
            self._probe = next(reversed(self._inflight))
            self._next_send_at = now
