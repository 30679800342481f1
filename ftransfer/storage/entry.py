"""What a name is: ``Entry`` and ``EntryKind``, shared by stores, the server's
operations and the client's results (a module of its own so that the client can
use them without the Store protocols, which import ``typing``)."""

from __future__ import annotations

from enum import IntEnum

from .._records import Record


class EntryKind(IntEnum):
    """What a name refers to (the values are the wire's entry kinds)."""

    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    OTHER = 4


class Entry(Record):
    """One directory entry, or what STAT found."""

    name: str
    """The last component (for STAT: the name as asked)."""
    kind: EntryKind
    size: int
    """Bytes; 0 for anything but a file."""
    mtime_ns: int
    """Modification time, nanoseconds since the epoch."""
    mode: int = 0o644
    """Permission bits (``0o777`` at most)."""
