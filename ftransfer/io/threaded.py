"""Blocking adapter: runs one datagram core on its own socket, in the calling thread.

Theory of operation
-------------------
Lockstep protocols (TFTP) are as fast as the round trip between the two processes:
about 60 µs on this machine's loopback, of which a C server spends almost nothing.
An asyncio loop adds a selector pass and a callback per datagram; a thread blocked
in ``recvfrom_into`` adds neither, which is how tftpd-hpa and atftpd run (a process
or thread per transfer). So each server TFTP transfer gets a thread and a blocking
socket, bounded by the server's session caps; and the synchronous client runs its
UDP and TFTP requests here too, with nothing of asyncio to import or wake.

The loop moves datagrams and fires the core's one timer, nothing else. The wait
for the next datagram is the socket's SO_RCVTIMEO, set only when the core's next
deadline comes earlier than the current setting or far later (so a busy transfer
makes one system call per datagram, not a poll and a read); waking early is
harmless, since the loop just asks the core again. The wait is also capped at
STOP_POLL_S so a stop request (server shutdown, Ctrl-C in another thread) is seen
promptly. With ``batch`` (the UDP mode), after each blocking read the loop also
takes whatever else is queued, without waiting (GRO batches cut apart), and sends
with GSO, before the core's events are handled: the bulk path's system calls are
per batch, not per datagram.

Order matters for lockstep speed: after a datagram the core's answer is sent
first, and only then are events handled (file writes), the next window read ahead
(``prefetch``) and timers checked, while the peer works on its answer.

``lock`` is held while the core runs, so another thread (the server's listener,
answering a repeated request) may call into the same core between datagrams.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from .udp import RECV_BUFFER_BYTES, DatagramSocket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..proto.machine import DatagramCore

STOP_POLL_S = 0.5
"""Longest single wait, so a stop request is noticed within this."""
STOP_CHECK_EVERY = 256
"""A running transfer asks ``stop`` once per this many datagrams (and at each
receive timeout): often enough for a prompt shutdown, rarely enough to be free."""
BATCH_MAX = 512
"""Datagrams taken per wake-up in batch mode before the core runs."""
_TIMEVAL = struct.Struct("@ll")


class _ReceiveTimeout:
    """SO_RCVTIMEO, changed only when it must be."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._current = -1.0

    def at_most(self, wait: float) -> None:
        wait = min(max(wait, 0.001), STOP_POLL_S)
        if wait < self._current or wait > 4 * self._current:
            seconds = int(wait)
            value = _TIMEVAL.pack(seconds, int((wait - seconds) * 1e6))
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            self._current = wait


def send_all(dsock: DatagramSocket, core: DatagramCore, now: float) -> None:
    """Send what the core queued; a failed send is a lost datagram (UDP's contract)."""
    datagrams = core.datagrams_to_send(now)
    if len(datagrams) == 1:
        dsock.send_one(*datagrams[0])
    elif datagrams:
        dsock.send(datagrams)


class _Reader:
    """Blocking reads, cut apart (GRO) and handed to the core (under ``guard``)."""

    def __init__(
        self,
        dsock: DatagramSocket,
        core: DatagramCore,
        guard: AbstractContextManager[object],
        clock: Callable[[], float],
        on_unreachable: Callable[[], None] | None,
    ) -> None:
        self.dsock, self.core, self._guard, self._clock = dsock, core, guard, clock
        self._on_unreachable = on_unreachable
        self._buf = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buf)

    def read(self) -> bool:
        """One read (blocking up to the receive timeout); False if nothing came."""
        try:
            n, segment, address = self.dsock.receive(self._buf)
        except ConnectionRefusedError:  # ICMP port unreachable
            if self._on_unreachable is not None:
                self._on_unreachable()
            return False
        except OSError:  # the receive timeout, or another ICMP error (a lost datagram)
            return False
        now = self._clock()
        view, receive = self._view, self.core.receive_datagram
        with self._guard:
            if segment >= n:
                receive(view[:n], address, now)
            else:
                for start in range(0, n, segment):
                    receive(view[start : min(start + segment, n)], address, now)
        return True

    def read_queued(self) -> None:
        """Whatever else is already queued, without waiting."""
        sock = self.dsock.sock
        sock.setblocking(False)
        try:
            for _ in range(BATCH_MAX):
                if not self.read():
                    break
        finally:
            sock.setblocking(True)


def run(
    sock: socket.socket,
    core: DatagramCore,
    on_event: Callable[[object], None],
    *,
    finished: Callable[[], bool],
    stop: Callable[[], bool] | None = None,
    lock: AbstractContextManager[object] | None = None,
    clock: Callable[[], float] = time.monotonic,
    batch: bool = False,
    on_unreachable: Callable[[], None] | None = None,
) -> None:
    """Drive ``core`` until ``finished()`` or ``stop()``; ``on_event`` sees every
    event (and may call back into the core, e.g. ``accept_final``)."""
    sock.setblocking(True)
    dsock = DatagramSocket(sock)
    guard = lock if lock is not None else contextlib.nullcontext()
    reader = _Reader(dsock, core, guard, clock, on_unreachable)
    timeout = _ReceiveTimeout(sock)
    prefetch: Callable[[], None] = getattr(core, "prefetch", lambda: None)
    countdown = STOP_CHECK_EVERY
    now = clock()
    while True:
        with guard:
            send_all(dsock, core, now)
            event = core.next_event()
            if event is not None:
                while event is not None:
                    on_event(event)
                    event = core.next_event()
                continue  # an event may have queued datagrams (accept_final)
            if finished():
                return
            prefetch()
            deadline = core.get_timer()
            if deadline is not None and now >= deadline:
                core.handle_timer(now)
                now = clock()
                continue
        countdown -= 1
        if countdown <= 0:
            countdown = STOP_CHECK_EVERY
            if stop is not None and stop():
                return
        timeout.at_most(STOP_POLL_S if deadline is None else deadline - now)
        if not reader.read():
            countdown = 0
        elif batch:
            reader.read_queued()
        now = clock()


__all__ = ["STOP_POLL_S", "run", "send_all"]
