"""``ftransfer relay``: a UDP relay that impairs traffic, to rehearse a bad link.

Theory of operation
-------------------
Datagrams from a client to ``--listen`` are forwarded to ``--to`` from a socket of
the relay's own, one per client address, so replies find their way back; each
direction has its own ``ImpairedPath`` (testing/netem.py: loss, duplication,
corruption, reordering, a rate-limited drop-tail queue, delay and jitter). The
decision is the model's; this loop only keeps a heap of departures and one timer,
so it costs a few microseconds per datagram and keeps up with the rates it
emulates. ``run`` is what the CLI calls: the impairment from its options, the
relay until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import signal
import socket
from collections.abc import Callable

from ..io.udp import open_udp_socket
from ..testing.netem import ImpairedPath, Impairment

RECV_BYTES = 65536


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


def run(
    listen: tuple[str, int],
    target: tuple[str, int],
    *,
    seed: int,
    ready: Callable[[tuple[str, int]], None],
    loss: float = 0.0,
    dup: float = 0.0,
    reorder: float = 0.0,
    corrupt: float = 0.0,
    delay_s: float = 0.0,
    jitter_s: float = 0.0,
    rate_bytes_per_s: float | None = None,
) -> None:
    """Relay ``listen`` -> ``target`` under this impairment until SIGINT or SIGTERM
    (a clean stop, like serve's); ``ready`` is told the address bound."""
    impairment = Impairment(
        loss=loss,
        dup=dup,
        reorder=reorder,
        corrupt=corrupt,
        delay_s=delay_s,
        jitter_s=jitter_s,
        rate_bytes_per_s=rate_bytes_per_s,
    )

    async def main() -> None:
        running = Relay(listen, target, impairment, seed)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        ready((str(running.address[0]), int(running.address[1])))
        try:
            await stop.wait()
        finally:
            running.close()

    asyncio.run(main())
