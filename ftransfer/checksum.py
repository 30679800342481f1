"""Digests: the only module that imports xxhash.

Files are identified by xxh3-128 (16 bytes, big-endian canonical form as returned by
``xxh3_128.digest()``). It detects accidental corruption, not tampering: anyone who
can change the bytes can recompute it (see README, "Integrity is not authenticity").
"""

from __future__ import annotations

import os
from collections.abc import Callable

import xxhash

DIGEST_BYTES = 16
"""Length of an xxh3-128 digest on the wire."""
ZERO_DIGEST = bytes(DIGEST_BYTES)
"""Stands for "no digest" (directories in STAT replies)."""

Hasher = xxhash.xxh3_128


def new_hasher() -> Hasher:
    """A fresh streaming xxh3-128 state."""
    return xxhash.xxh3_128()


def digest_bytes(data: bytes | memoryview) -> bytes:
    """The xxh3-128 digest of a buffer."""
    return xxhash.xxh3_128_digest(data)


def hash_range(hasher: Hasher, fd: int, offset: int, count: int, scratch: bytearray) -> int:
    """Feed ``count`` bytes of ``fd`` from ``offset`` into ``hasher``; returns bytes read.

    Reads with pread into the caller's reusable ``scratch`` buffer, so it allocates
    nothing. Returns fewer than ``count`` if the file is shorter than expected; a
    failed read raises its OSError, for the caller to map.
    """
    view = memoryview(scratch)
    done = 0
    while done < count:
        want = min(len(scratch), count - done)
        got = os.preadv(fd, [view[:want]], offset + done)
        if got == 0:
            break
        hasher.update(view[:got])
        done += got
    return done


def file_digest(fd: int, scratch: bytearray | None = None) -> bytes:
    """The xxh3-128 digest of a whole open file."""
    hasher = new_hasher()
    buf = scratch if scratch is not None else bytearray(64 * 1024)  # see HASH_SCRATCH_BYTES
    offset = 0
    while True:
        got = hash_range(hasher, fd, offset, len(buf), buf)
        offset += got
        if got < len(buf):
            return hasher.digest()


def hex_digest(digest: bytes) -> str:
    """Lower-case hex, as printed by the CLI."""
    return digest.hex()


datagram_check: Callable[[bytes | memoryview], int] = xxhash.xxh3_64_intdigest
"""The per-datagram integrity check of the UDP mode: xxh3-64 as an integer (the C
function itself: a Python wrapper cost 0.2 us twice per datagram)."""
