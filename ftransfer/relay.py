"""``ftransfer relay``: a UDP relay that impairs traffic, to rehearse a bad link.

Theory of operation
-------------------
Datagrams from a client to ``--listen`` are forwarded to ``--to`` from a socket of
the relay's own, one per client address, so replies find their way back; each
direction has its own ``ImpairedPath``. A path decides, from one seeded
``random.Random``, what becomes of each datagram: lost, duplicated, one bit
flipped, held back (reordered), and when it leaves: after a serialisation queue
at ``--rate`` (drop-tail beyond QUEUE_S of backlog, so congestion is real), plus
``--delay`` and up to ``--jitter``. The same model, on virtual time, is the test
suite's simulated link (tests/simlink.py). The decision is pure (``admit``); the relay
loop only keeps a heap of departures and one timer, so it costs a few
microseconds per datagram and keeps up with the rates it emulates.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import socket
from dataclasses import dataclass

from .io.datagram import open_udp_socket

QUEUE_S = 0.05
"""Drop-tail queue at the emulated bottleneck: 50 ms of backlog at --rate."""
RECV_BYTES = 65536


@dataclass(frozen=True, kw_only=True)
class Impairment:
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


class Relay:
    """The running relay: one listening socket, one upstream socket per client."""

    def __init__(
        self, listen: tuple[str, int], target: tuple[str, int], impairment: Impairment, seed: int
    ) -> None:
        self.target, self.impairment = target, impairment
        self.rng = random.Random(seed)
        self.listener = open_udp_socket(listen[0], listen[1], connect=False)
        self.address = self.listener.getsockname()
        self._loop = asyncio.get_running_loop()
        self._upstreams: dict[
            tuple[str, int], tuple[socket.socket, ImpairedPath, ImpairedPath]
        ] = {}
        self._heap: list[tuple[float, int, socket.socket, bytes, tuple[str, int] | None]] = []
        self._order = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop.add_reader(self.listener.fileno(), self._from_clients)

    def _route(self, client: tuple[str, int]) -> tuple[socket.socket, ImpairedPath, ImpairedPath]:
        route = self._upstreams.get(client)
        if route is None:
            upstream = open_udp_socket(self.target[0], self.target[1], connect=True)
            route = (
                upstream,
                ImpairedPath(self.impairment, self.rng),
                ImpairedPath(self.impairment, self.rng),
            )
            self._upstreams[client] = route
            self._loop.add_reader(upstream.fileno(), self._from_server, client)
        return route

    def _from_clients(self) -> None:
        now = self._loop.time()
        for _ in range(512):
            try:
                data, client = self.listener.recvfrom(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            upstream, path_up, _down = self._route((str(client[0]), int(client[1])))
            for leave, copy in path_up.admit(data, now):
                self._schedule(leave, upstream, copy, None)
        self._arm()

    def _from_server(self, client: tuple[str, int]) -> None:
        now = self._loop.time()
        upstream, _up, path_down = self._upstreams[client]
        for _ in range(512):
            try:
                data = upstream.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                break
            for leave, copy in path_down.admit(data, now):
                self._schedule(leave, self.listener, copy, client)
        self._arm()

    def _schedule(
        self, leave: float, sock: socket.socket, data: bytes, to: tuple[str, int] | None
    ) -> None:
        self._order += 1
        heapq.heappush(self._heap, (leave, self._order, sock, data, to))

    def _arm(self) -> None:
        now = self._loop.time()
        while self._heap and self._heap[0][0] <= now:
            _leave, _order, sock, data, to = heapq.heappop(self._heap)
            try:
                if to is None:
                    sock.send(data)
                else:
                    sock.sendto(data, to)
            except OSError:
                pass  # a full buffer or an unreachable peer: the datagram is lost
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            self._timer = self._loop.call_at(self._heap[0][0], self._arm)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self.listener.fileno())
        self.listener.close()
        for upstream, _up, _down in self._upstreams.values():
            self._loop.remove_reader(upstream.fileno())
            upstream.close()
