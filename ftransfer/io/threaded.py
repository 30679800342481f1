"""Blocking adapter: runs one sans-IO TFTP transfer on its own socket and thread.

Theory of operation
-------------------
TFTP is lockstep (or a window at a time), so its speed is the round trip between
the two processes: about 60 µs on this machine's loopback, of which a C server
spends almost nothing. An asyncio loop adds a selector pass and a callback per
datagram; a thread blocked in ``recvfrom_into`` adds neither, which is how
tftpd-hpa and atftpd run (a process or thread per transfer). So each TFTP transfer
gets a thread and a blocking socket, bounded by the server's session caps.

The loop moves datagrams and fires the core's one timer, nothing else. The wait
for the next datagram is the socket's SO_RCVTIMEO, set only when the core's next
deadline comes earlier than the current setting or far later (so a busy transfer
makes one system call per datagram, not a poll and a read); waking early is
harmless, since the loop just asks the core again. The wait is also capped at
STOP_POLL_S so a stop request (server shutdown) is seen promptly.

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
from typing import Protocol

from ..proto.tftp.transfer import Address, Event

STOP_POLL_S = 0.5
"""Longest single wait, so a stop request is noticed within this."""
STOP_CHECK_EVERY = 256
"""A running transfer asks ``stop`` once per this many datagrams (and at each
receive timeout): often enough for a prompt shutdown, rarely enough to be free."""
RECV_BYTES = 65536
"""Largest datagram (blksize 65464 + 4-byte header fits)."""
_TIMEVAL = struct.Struct("@ll")


class Machine(Protocol):
    """What the loop needs from a sans-IO transfer (BlockSender, BlockReceiver,
    TftpClient)."""

    @property
    def finished(self) -> bool: ...

    def receive(self, datagram: bytes | memoryview, address: Address, now: float) -> None: ...

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]: ...

    def next_event(self) -> Event | None: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


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


def send_all(sock: socket.socket, machine: Machine) -> None:
    """Send what the core queued; a failed send is a lost datagram (UDP's contract)."""
    sendto = sock.sendto
    for datagram, address in machine.datagrams_to_send():
        try:  # noqa: SIM105 (suppress() would cost an object per datagram)
            sendto(datagram, address)
        except OSError:
            pass


def run(
    sock: socket.socket,
    machine: Machine,
    on_event: Callable[[Event], None],
    *,
    stop: Callable[[], bool] | None = None,
    lock: AbstractContextManager[object] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Drive ``machine`` until it finishes or ``stop`` returns true; ``on_event``
    sees every event (and may call back into the core, e.g. ``accept_final``).

    Order matters for lockstep speed: after a datagram the core's answer is sent
    first, and only then are events handled (file writes), the next window read
    ahead (``prefetch``) and timers checked, while the peer works on its answer."""
    sock.setblocking(True)
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    timeout = _ReceiveTimeout(sock)
    guard = lock if lock is not None else contextlib.nullcontext()
    recv = sock.recvfrom_into
    prefetch: Callable[[], None] = getattr(machine, "prefetch", lambda: None)
    countdown = STOP_CHECK_EVERY
    now = clock()
    while True:
        with guard:
            send_all(sock, machine)
            event = machine.next_event()
            if event is not None:
                while event is not None:
                    on_event(event)
                    event = machine.next_event()
                continue  # an event may have queued datagrams (accept_final)
            if machine.finished:
                return
            prefetch()
            deadline = machine.get_timer()
            if deadline is not None and now >= deadline:
                machine.handle_timer(now)
                now = clock()
                continue
        countdown -= 1
        if countdown <= 0:
            countdown = STOP_CHECK_EVERY
            if stop is not None and stop():
                return
        timeout.at_most(STOP_POLL_S if deadline is None else deadline - now)
        try:
            n, raw = recv(buf)
        except OSError:  # the receive timeout, or an ICMP error (a lost datagram)
            now = clock()
            countdown = 0
            continue
        now = clock()
        with guard:
            machine.receive(view[:n], raw if len(raw) == 2 else (raw[0], raw[1]), now)
