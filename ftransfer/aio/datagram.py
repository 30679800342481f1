"""asyncio adapter for UDP: moves datagrams and re-arms one timer; decides nothing.

Theory of operation
-------------------
asyncio's default datagram transport reads one datagram per loop iteration, which
PERF-NOTES.md measured at ~75k datagrams/s with 94 % dropped under a blast. Here the
socket is non-blocking and registered with ``loop.add_reader``; each wake-up drains
it with ``recvfrom_into`` into one reused buffer, up to DRAIN_BATCH datagrams, then
lets the owner run the protocol once for the whole batch (``on_batch``). The socket
asks for an 8 MiB receive buffer (the kernel caps it at rmem_max, doubled), which
absorbs bursts between wake-ups without replacing flow control.

Sending is ``sendto`` straight from the caller; a full socket buffer (EAGAIN) or
ENOBUFS drops the datagram, which the protocol treats as loss: UDP's contract.
One ``TimerHandle`` is kept, re-armed to the core's ``get_timer()`` deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from ..errors import ConnectionFailed

RECV_BUFFER_BYTES = 65536
"""One datagram at most (the largest UDP payload)."""
SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
"""Requested SO_RCVBUF / SO_SNDBUF."""
DRAIN_BATCH = 512
"""Datagrams read per wake-up before the protocol runs (fairness to other sockets)."""

Address = tuple[str, int]
OnDatagram = Callable[[memoryview, Address], None]


def open_udp_socket(host: str, port: int, *, connect: bool) -> socket.socket:
    """A non-blocking UDP socket bound to, or connected to, ``host:port``."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_DGRAM, flags=0 if connect else socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConnectionFailed(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        if connect:
            sock.connect(address)
        else:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
    except OSError as exc:
        sock.close()
        verb = "reach" if connect else "listen on"
        raise ConnectionFailed(f"cannot {verb} udp {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class DatagramPump:
    """Reads batches from a socket, sends datagrams, keeps one timer."""

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: OnDatagram,
        on_batch: Callable[[], None],
        on_timer: Callable[[], None],
    ) -> None:
        self.sock = sock
        self._on_datagram, self._on_batch, self._on_timer = on_datagram, on_batch, on_timer
        self._buf = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.send_drops = 0
        self._loop.add_reader(sock.fileno(), self._readable)

    def now(self) -> float:
        return self._loop.time()

    def _readable(self) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                n, address = self.sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. ECONNREFUSED from an ICMP error: a lost datagram
                continue
            self._on_datagram(self._view[:n], (str(address[0]), int(address[1])))
        self._on_batch()

    def send(self, datagram: bytes, address: Address | None = None) -> None:
        """Send one datagram; a full buffer drops it (the protocol will recover)."""
        try:
            if address is None:
                self.sock.send(datagram)
            else:
                self.sock.sendto(datagram, address)
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            self.send_drops += 1
        except OSError:
            self.send_drops += 1

    def arm(self, deadline: float | None) -> None:
        """Run ``on_timer`` at ``deadline`` (loop time), replacing any earlier arming."""
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, None
        self._on_timer()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
