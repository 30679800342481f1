"""The link model: what becomes of each datagram on an impaired path (netem's job).

Theory of operation
-------------------
An ``ImpairedPath`` is one direction of a link. It decides, from one seeded
``random.Random``, what becomes of each datagram: lost (independently, or in
Gilbert bursts), duplicated, one bit flipped, held back (reordered), and when it
leaves: after a serialisation queue at the bottleneck rate (drop-tail beyond
QUEUE_S of backlog, so congestion is real), plus the one-way delay and up to the
jitter. The decision is pure (``admit`` returns the arrival times): the same model
runs the simulator on virtual time (sim.py), the ``ftransfer relay`` on a real
clock (tools/relay.py) and the TUN link of the WAN benchmark, so a result in one
carries over to the others. Shipped as part of the library, as ``trio.testing``
is, so that a user can rehearse a bad link too.
"""

from __future__ import annotations

import random

from .._records import Record

QUEUE_S = 0.05
"""Drop-tail queue at the emulated bottleneck: 50 ms of backlog at --rate."""


class Impairment(Record):
    loss: float = 0.0
    burst: float = 0.0
    """Probability that a loss starts a burst (Gilbert model): while in a burst, each
    next datagram is lost with probability 1/2."""
    dup: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay_s: float = 0.0
    jitter_s: float = 0.0
    rate_bytes_per_s: float | None = None
    queue_bytes: int | None = None
    """Drop-tail queue at the bottleneck; default QUEUE_S of backlog at the rate."""


class ImpairedPath:
    """One direction of the emulated link (also the test suite's simulated link)."""

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment, self.rng = impairment, rng
        self._busy_until = 0.0
        self._in_burst = False
        self.dropped_random = 0
        self.dropped_queue = 0
        rate = impairment.rate_bytes_per_s
        self._queue_bytes = impairment.queue_bytes
        if self._queue_bytes is None and rate:
            self._queue_bytes = int(QUEUE_S * rate)

    def admit(self, datagram: bytes, now: float) -> list[tuple[float, bytes]]:
        """When each copy of ``datagram`` should arrive (nothing if it is lost)."""
        if self._lost():
            self.dropped_random += 1
            return []
        copies = 2 if self.rng.random() < self.impairment.dup else 1
        return [d for _ in range(copies) if (d := self._depart(self._maybe_flip(datagram), now))]

    def _lost(self) -> bool:
        if self._in_burst:
            self._in_burst = self.rng.random() < 0.5
            if self._in_burst:
                return True
        if self.rng.random() < self.impairment.loss:
            self._in_burst = self.rng.random() < self.impairment.burst
            return True
        return False

    def _maybe_flip(self, datagram: bytes) -> bytes:
        if self.rng.random() >= self.impairment.corrupt or not datagram:
            return datagram
        bit = self.rng.randrange(len(datagram) * 8)
        flipped = bytearray(datagram)
        flipped[bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)

    def _depart(self, datagram: bytes, now: float) -> tuple[float, bytes] | None:
        imp = self.impairment
        leave = now
        if imp.rate_bytes_per_s:
            backlog = max(self._busy_until - now, 0.0) * imp.rate_bytes_per_s
            if self._queue_bytes is not None and backlog + len(datagram) > self._queue_bytes:
                self.dropped_queue += 1
                return None
            self._busy_until = max(self._busy_until, now) + len(datagram) / imp.rate_bytes_per_s
            leave = self._busy_until
        leave += imp.delay_s + self.rng.uniform(0, imp.jitter_s)
        if self.rng.random() < imp.reorder:
            leave += self.rng.uniform(1, 3) * max(imp.jitter_s, imp.delay_s / 4, 0.001)
        return leave, datagram
