"""Digests: the only module that imports xxhash.

Theory of operation
-------------------
A file is identified by its *tree digest*, built from xxh3-128 (16 bytes, the
big-endian canonical form of ``xxh3_128.digest()``):

- the file is cut into chunks of CHUNK_BYTES (8 MiB; the last may be shorter);
- a file of at most one chunk has the plain xxh3-128 of its bytes as its digest
  (so ``xxhsum -H2`` agrees on every file up to 8 MiB);
- a longer file's digest is the xxh3-128 of its chunk digests, back to back.

Why a tree: python-xxhash cannot save a running hash's state, so a whole-file
digest could only be resumed by reading again everything before the break. The
chunk digests *are* the state: a resumed transfer starts from the digests of the
chunks it has (storage/journal.py keeps them beside a partial file) and reads
nothing twice. ``TreeHasher`` is a drop-in for a streaming hasher (``update``,
``digest``) that also hands each finished chunk's digest to ``on_chunk``.

It detects accidental corruption, not tampering: anyone who can change the bytes
can recompute it (see README, "Integrity is not authenticity").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import xxhash

DIGEST_BYTES = 16
"""Length of an xxh3-128 digest on the wire."""
ZERO_DIGEST = bytes(DIGEST_BYTES)
"""Stands for "no digest" (directories in STAT replies)."""

CHUNK_BYTES = 8 << 20
"""The tree digest's chunk (and the unit a transfer resumes at)."""
DIGEST_ALGORITHM = "xxh3-128-tree-8MiB"
"""What ``--json`` calls the digest it shows."""

_xxh128 = xxhash.xxh3_128_digest


def join_digests(chunks: Sequence[bytes]) -> bytes:
    """The tree digest of a file whose chunks have these digests (at least one)."""
    if len(chunks) == 1:
        return chunks[0]
    return _xxh128(b"".join(chunks))


class TreeHasher:
    """A streaming tree digest (see the module docstring).

    ``chunks`` resumes it after whole chunks whose digests are known; each chunk
    that fills up is digested at once and, if given, passed to ``on_chunk(index,
    digest)`` (a journal appends it there)."""

    __slots__ = ("_current", "_filled", "chunks", "on_chunk")

    def __init__(
        self,
        chunks: Sequence[bytes] = (),
        on_chunk: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self.chunks = list(chunks)
        """The digests of the whole chunks hashed so far."""
        self.on_chunk = on_chunk
        self._current = xxhash.xxh3_128()
        self._filled = 0

    @property
    def hashed(self) -> int:
        """Bytes hashed so far, resumed chunks included."""
        return len(self.chunks) * CHUNK_BYTES + self._filled

    def update(self, data: bytes | bytearray | memoryview) -> None:
        room = CHUNK_BYTES - self._filled
        if len(data) < room:
            self._current.update(data)
            self._filled += len(data)
            return
        view = memoryview(data)
        while len(view) >= room:
            self._current.update(view[:room])
            self._close_chunk()
            view, room = view[room:], CHUNK_BYTES
        if view:
            self._current.update(view)
            self._filled = len(view)

    def _close_chunk(self) -> None:
        digest = self._current.digest()
        self.chunks.append(digest)
        self._current.reset()
        self._filled = 0
        if self.on_chunk is not None:
            self.on_chunk(len(self.chunks) - 1, digest)

    def digest(self) -> bytes:
        """The tree digest of everything hashed so far (the state goes on)."""
        if not self._filled:
            return join_digests(self.chunks) if self.chunks else self._current.digest()
        return join_digests([*self.chunks, self._current.digest()])


Hasher = TreeHasher


def new_hasher() -> TreeHasher:
    """A fresh streaming digest."""
    return TreeHasher()


def digest_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """The digest of a buffer."""
    if len(data) <= CHUNK_BYTES:
        return _xxh128(data)
    hasher = TreeHasher()
    hasher.update(data)
    return hasher.digest()


def prefix_digest(chunks: Sequence[bytes]) -> bytes:
    """What two sides compare to agree on the chunks a partial holds: the xxh3-128
    of their digests back to back (ZERO_DIGEST for none)."""
    return _xxh128(b"".join(chunks)) if chunks else ZERO_DIGEST


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
    """The digest of a whole open file."""
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


def check64(data: bytes) -> int:
    """xxh3-64 of a small record (journal records and headers)."""
    return xxhash.xxh3_64_intdigest(data)


def key_hex(data: bytes) -> str:
    """A 32-hex-digit name derived from ``data`` (a partial's file name)."""
    return xxhash.xxh3_128_hexdigest(data)
