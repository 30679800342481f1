"""asyncio adapter for datagram cores: moves datagrams, re-arms one timer, decides nothing.

Theory of operation
-------------------
asyncio's default datagram transport reads one datagram per loop iteration, which
was measured at ~75k datagrams/s with 94 % dropped under a blast. Here the socket
is non-blocking and registered with ``loop.add_reader``; each wake-up drains it
into one reused buffer, up to DRAIN_BATCH datagrams (GRO batches cut apart by
udp.py), then lets the owner run its protocol once for the whole batch
(``on_batch``). One ``TimerHandle`` is kept, re-armed to the owner's deadline.

``DatagramPump`` is that loop with callbacks (the TFTP listener uses it as is);
``CoreDriver`` puts any datagram core (proto/machine.py: the UDP endpoint or
request, a TFTP transfer) behind it, as aioquic's asyncio protocol does:

    datagram -> core.receive_datagram          timer -> core.handle_timer
    after a batch or a timer: every event -> on_event (the application may answer
    into the core: a verdict, an abort), then core.datagrams_to_send -> the
    socket, and the timer re-armed to core.get_timer()

So the application's answers leave in the same batch as the datagrams that caused
them, and no caller ever touches a core's lists. An exception from ``on_event`` is
logged and the step goes on: the other peers' datagrams still leave and the timer
is still re-armed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .udp import RECV_BUFFER_BYTES, Address, DatagramSocket

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from ..proto.machine import DatagramCore

DRAIN_BATCH = 512
"""Datagrams read per wake-up before the protocol runs (fairness to other sockets)."""
OnDatagram = Callable[[memoryview, Address], None]


class DatagramPump:
    """Reads batches from a socket, sends datagrams, keeps one timer."""

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: OnDatagram,
        on_batch: Callable[[], None],
        on_timer: Callable[[], None],
        on_unreachable: Callable[[], None] | None = None,
    ) -> None:
        self.socket = DatagramSocket(sock)
        self._on_datagram, self._on_batch, self._on_timer = on_datagram, on_batch, on_timer
        self._on_unreachable = on_unreachable
        self._buf = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def sock(self) -> socket.socket:
        return self.socket.sock

    @property
    def gso(self) -> bool:
        return self.socket.gso

    @property
    def gro(self) -> bool:
        return self.socket.gro

    def now(self) -> float:
        return self._loop.time()

    def _readable(self) -> None:
        received = 0
        while received < DRAIN_BATCH:
            try:
                n, segment, address = self.socket.receive(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:  # ICMP port unreachable
                received += 1
                if self._on_unreachable is not None:
                    self._on_unreachable()
                continue
            except OSError:  # another ICMP error: a lost datagram
                received += 1
                continue
            if segment >= n:
                received += 1
                self._on_datagram(self._view[:n], address)
                continue
            for start in range(0, n, segment):  # GRO: several datagrams back to back
                received += 1
                self._on_datagram(self._view[start : min(start + segment, n)], address)
        self._on_batch()

    def send(self, datagrams: list[tuple[bytes, Address]]) -> None:
        if datagrams and not self._closed:
            self.socket.send(datagrams)

    def arm(self, deadline: float | None) -> None:
        """Run ``on_timer`` at ``deadline`` (loop time), replacing any earlier arming."""
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, None
        self._on_timer()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self.sock.fileno())
        self.socket.close()


class CoreDriver:
    """Runs one datagram core on a socket (see the module docstring)."""

    def __init__(
        self,
        core: DatagramCore,
        sock: socket.socket,
        on_event: Callable[[object], None],
        *,
        on_unreachable: Callable[[], None] | None = None,
    ) -> None:
        self.core, self._on_event = core, on_event
        self.pump = DatagramPump(
            sock, self._datagram, self.step, self._timer, on_unreachable=on_unreachable
        )

    def _datagram(self, view: memoryview, address: Address) -> None:
        self.core.receive_datagram(view, address, self.pump.now())

    def _timer(self) -> None:
        self.core.handle_timer(self.pump.now())
        self.step()

    def step(self) -> None:
        """Hand out events, send what the core has, re-arm its timer. A handler that
        raises is logged and skipped: one bad event must not stop the core's other
        work (the datagrams below, the timer) for every peer."""
        core = self.core
        while (event := core.next_event()) is not None:
            try:
                self._on_event(event)
            except Exception:
                import logging

                logging.getLogger("ftransfer").exception("error handling %r", event)
        self.pump.send(core.datagrams_to_send(self.pump.now()))
        self.pump.arm(core.get_timer())

    def close(self) -> None:
        self.pump.close()
