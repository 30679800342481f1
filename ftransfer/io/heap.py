"""Giving freed heap memory back to the system (glibc's ``malloc_trim``).

Theory of operation
-------------------
Each TLS connection costs the server some 200 KiB of C heap (OpenSSL's state and
record buffers, asyncio's 64 KiB TLS read buffer: io/tls.py), all freed when the
connection ends. glibc keeps freed memory in the middle of its heap for reuse and
returns only the top of it to the system, so after connections came and went the
server's resident size stayed higher although almost all of it was free (the
churn test: 250 TLS connections closed left +12 MiB with a trim every 64, +3 MiB
with one every 16); ``malloc_trim(0)`` gives it back.

``Trimmer`` calls ``malloc_trim(0)`` when the last open connection has ended, and
after every ``every`` ended connections while others stay open; it costs well
under a millisecond (tens of microseconds on a fragmented 50 MiB heap). The
server reports a connection ended once its transport has let go of it. Where the C library has no
``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

TRIM_EVERY = 16
"""Ended connections between two trims: at most this many connections' freed
memory (about 200 KiB each over TLS, so 3 MiB) stays resident."""


def _malloc_trim() -> Callable[[], object] | None:
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError, ImportError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class Trimmer:
    """Counts connections; trims the heap when none is open, and every ``every``
    ended connections."""

    def __init__(self, every: int = TRIM_EVERY, trim: Callable[[], object] | None = None) -> None:
        self.every = every
        self._trim = trim if trim is not None else _malloc_trim()
        self._open = 0
        self._ended = 0
        self.trims = 0

    def connection_started(self) -> None:
        self._open += 1

    def connection_ended(self) -> None:
        self._open = max(0, self._open - 1)
        self._ended += 1
        if (self._ended >= self.every or not self._open) and self._trim is not None:
            self._ended = 0
            self.trims += 1
            self._trim()
