"""Skip what is already there: rsync's quick check and its --checksum.

Theory of operation
-------------------
Before a batch moves a byte, each file is compared with what the other side has:

- ``update`` (rsync's quick check): the same size and the same mtime_ns. ftransfer
  keeps a file's mtime on both sides (PUT carries it, a download is given the
  server's), so an unchanged file matches exactly on a second run.
- ``checksum``: the same size and the same xxh3-128. The server answers STAT from
  its digest cache (keyed by inode, size, mtime_ns and ctime: an unchanged file
  is not re-read there); the client hashes a local file once for the same key
  and remembers it across runs (``local_digest``, client/digests.py), so an
  unchanged file is not re-read here either.

The remote side is read in as few requests as possible: one LIST per remote
directory for ``update`` (TCP pipelines them), and for ``checksum`` one STAT per
file of the same size, pipelined over TCP. A file that is not there, or is not a
regular file, is sent.
"""

from __future__ import annotations

import os

from ..checksum import file_digest
from ..errors import UsageError
from .digests import DigestMemory

MODES = ("update", "checksum")

_MEMORIES: dict[str, DigestMemory] = {}
"""The digest memory of each state directory used by this process (digests.py)."""


def memory_for(state_dir: str | None) -> DigestMemory:
    """Where local digests are remembered across runs (client/digests.py)."""
    from .resume import default_state_dir

    path = os.path.join(state_dir or default_state_dir(), "digests")
    memory = _MEMORIES.get(path)
    if memory is None:
        memory = _MEMORIES[path] = DigestMemory(path)
    return memory


def check_mode(skip: str | None) -> None:
    if skip is not None and skip not in MODES:
        raise UsageError(f"skip must be one of {', '.join(MODES)} (not {skip!r})")


def local_stat(path: str) -> os.stat_result | None:
    """The local file's stat, or None if it is not a regular file there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    import stat

    return st if stat.S_ISREG(st.st_mode) else None


def local_digest(path: str, st: os.stat_result, memory: DigestMemory) -> bytes | None:
    """The digest of a local file, read once while it does not change (remembered
    across runs in ``memory``); None if it cannot be read (the transfer then
    reports why)."""
    digest = memory.get(st)
    if digest is not None:
        return digest
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ctime_ns != st.st_ctime_ns:
            return None  # changed since it was looked at: compare nothing
        digest = file_digest(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    memory.put(st, digest)
    return digest


def same_quick(size: int, mtime_ns: int, st: os.stat_result) -> bool:
    """rsync's quick check: the same size and modification time."""
    return st.st_size == size and st.st_mtime_ns == mtime_ns
