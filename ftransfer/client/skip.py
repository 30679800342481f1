"""Skip what is already there: rsync's quick check and its --checksum.

Theory of operation
-------------------
Before a batch moves a byte, each file is compared with what the other side has:

- ``update`` (rsync's quick check): the same size and the same mtime_ns. ftransfer
  keeps a file's mtime on both sides (PUT carries it, a download is given the
  server's), so an unchanged file matches exactly on a second run.
- ``checksum``: the same size and the same xxh3-128. The server answers STAT from
  its digest cache (keyed by inode, size, mtime_ns and ctime: an unchanged file
  is not re-read there); the client hashes a local file once per process for the
  same key (``local_digest``).

The remote side is read in as few requests as possible: one LIST per remote
directory for ``update`` (TCP pipelines them), and for ``checksum`` one STAT per
file of the same size, pipelined over TCP. A file that is not there, or is not a
regular file, is sent.
"""

from __future__ import annotations

import os

from ..checksum import file_digest
from ..errors import UsageError

MODES = ("update", "checksum")

_DIGESTS: dict[tuple[int, int, int, int, int], bytes] = {}
"""Local digests this process computed, by (device, inode, size, mtime_ns, ctime_ns)."""


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


def local_digest(path: str, st: os.stat_result) -> bytes | None:
    """xxh3-128 of a local file (read once per process while it does not change);
    None if it cannot be read (the transfer then reports why)."""
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is not None:
        return digest
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        digest = file_digest(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    _DIGESTS[key] = digest
    return digest


def same_quick(size: int, mtime_ns: int, st: os.stat_result) -> bool:
    """rsync's quick check: the same size and modification time."""
    return st.st_size == size and st.st_mtime_ns == mtime_ns
