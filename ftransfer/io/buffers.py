"""Receive buffers whose memory goes back to the system when they are not in use.

Theory of operation
-------------------
A connection reads into one reused buffer (recv_into, no allocation per read).
For bulk data that buffer should be large (1 MiB: few system calls per GiB), but a
server that gives every connection 1 MiB for its whole life holds 250 MiB for 250
idle clients, and worse, a megabyte allocated and freed by thousands of short
connections is kept by the C allocator: glibc raises its mmap threshold after the
first large free, so later buffers come from the heap, which fragments and never
shrinks (measured: RSS 26 -> 240 MiB after 2,000 connections, 16 at a time, and
no return after they closed).

So a connection holds a small buffer (SMALL_BUFFER_BYTES, enough for control
frames and small files) and borrows a large one only while a file's bytes are
streaming in. Both are anonymous memory maps (``MappedBuffer``), not heap: one
that is released is unmapped and its pages are the system's again at once, and
only the pages a read touched were ever resident. The small one is mapped at a
connection's first read and unmapped when it is lost (the same 64 KiB from the
heap stayed resident after the connections closed: measured, 250 connections that
each sent one 60 KB request left RSS 23 MiB up after they closed; mapped, 4 MiB).
The pool keeps up to ``keep`` large buffers for reuse, so a busy server does not
map and unmap per file; the rest are unmapped. Memory is then bounded by what is
open and streaming now.
"""

from __future__ import annotations

import mmap

LARGE_BUFFER_BYTES = 1 << 20
"""A connection's buffer while file bytes stream in (few system calls per GiB)."""
SMALL_BUFFER_BYTES = 64 * 1024
"""A connection's buffer otherwise: requests, replies, small files."""
POOL_KEEP = 8
"""Large buffers kept mapped for reuse (8 MiB): more are unmapped when released."""


class MappedBuffer:
    """An anonymous mapping and a view of it (pages are resident once touched)."""

    def __init__(self, size: int) -> None:
        self._map = mmap.mmap(-1, size)
        self.view = memoryview(self._map)

    def release(self) -> None:
        """Unmap (if a view of it is still alive somewhere, when that one dies)."""
        self.view.release()
        try:  # (not contextlib.suppress: every command imports this module)
            self._map.close()
        except BufferError:
            return


class BufferPool:
    """Large buffers lent to connections while data streams in."""

    def __init__(self, size: int = LARGE_BUFFER_BYTES, keep: int = POOL_KEEP) -> None:
        self.size, self.keep = size, keep
        self._free: list[MappedBuffer] = []
        self.lent = 0

    @property
    def kept(self) -> int:
        """Buffers mapped and waiting for reuse (at most ``keep``)."""
        return len(self._free)

    def take(self) -> MappedBuffer:
        self.lent += 1
        return self._free.pop() if self._free else MappedBuffer(self.size)

    def give(self, buffer: MappedBuffer) -> None:
        self.lent -= 1
        if len(self._free) < self.keep:
            self._free.append(buffer)
        else:
            buffer.release()

    def clear(self) -> None:
        while self._free:
            self._free.pop().release()
