"""The client's memory of local digests, kept across runs (``--checksum``).

Theory of operation
-------------------
``--checksum`` compares a local file's digest with the server's. The server
answers from its digest cache; the client would read every local candidate
again on each run. So the client keeps what it computed in a small append-only
file, ``$XDG_STATE_HOME/ftransfer/digests``, one 64-byte record per file:

    device u64, inode u64, size u64, mtime_ns i64, ctime_ns i64, digest[16], check u64

``check`` is the xxh3-64 of the 56 bytes before it: a torn or flipped record is
skipped, never believed. A record is used only while every key field matches the
file's ``stat`` now: any write changes the mtime and the ctime, and the ctime
cannot be set back by a user, so a changed file is hashed again. Files whose
ctime has whole-second resolution (some file systems), or that changed in the
last two seconds (git's "racily clean" rule), are not remembered: a change
within the same tick could keep the key. The file is read once per process,
appended to as digests are computed, and rewritten with only its newest
MAX_RECORDS when it grows past twice that. Any failure to read or write it is
ignored: the cache only ever saves work.
"""

from __future__ import annotations

import os
import struct
import time

from ..checksum import check64

RECORD = struct.Struct(">QQQqq16sQ")
MAX_RECORDS = 100_000
"""Records kept after a compaction (6.4 MB); the file is compacted at twice this."""

Key = tuple[int, int, int, int, int]


RACY_S = 2.0
"""A file changed this recently is not remembered across runs (git's "racily
clean" rule): a second write within the same timestamp tick could keep its key."""


def key_of(st: os.stat_result) -> Key | None:
    if st.st_ctime_ns % 1_000_000_000 == 0:
        return None  # whole-second timestamps: a quick change could keep the key
    if time.time_ns() - st.st_ctime_ns < RACY_S * 1e9:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _record(key: Key, digest: bytes) -> bytes:
    head = RECORD.pack(*key, digest, 0)[: RECORD.size - 8]
    return head + check64(head).to_bytes(8, "big")


class DigestMemory:
    """Local digests by file identity, loaded from ``path`` on first use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._known: dict[Key, bytes] | None = None
        self._records = 0

    def _load(self) -> dict[Key, bytes]:
        if self._known is not None:
            return self._known
        known: dict[Key, bytes] = {}
        try:
            with open(self.path, "rb") as source:
                data = source.read()
        except OSError:
            data = b""
        for start in range(0, len(data) - RECORD.size + 1, RECORD.size):
            raw = data[start : start + RECORD.size]
            if check64(raw[:-8]).to_bytes(8, "big") != raw[-8:]:
                continue
            device, inode, size, mtime_ns, ctime_ns, digest, _check = RECORD.unpack(raw)
            known[(device, inode, size, mtime_ns, ctime_ns)] = digest
            self._records += 1
        self._known = known
        return known

    def get(self, st: os.stat_result) -> bytes | None:
        key = key_of(st)
        return None if key is None else self._load().get(key)

    def put(self, st: os.stat_result, digest: bytes) -> None:
        key = key_of(st)
        if key is None:
            return
        known = self._load()
        if known.get(key) == digest:
            return
        known[key] = digest
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            if self._records >= 2 * MAX_RECORDS:
                self._compact(known)
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, _record(key, digest))
            finally:
                os.close(fd)
            self._records += 1
        except OSError:
            return  # (a cache: a failure costs a later re-read, nothing else)

    def _compact(self, known: dict[Key, bytes]) -> None:
        newest = list(known.items())[-MAX_RECORDS:]
        temp = f"{self.path}.{os.getpid()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(_record(key, digest) for key, digest in newest))
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        self._records = len(newest)
