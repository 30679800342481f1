"""Events of the TCP protocol: one frozen, keyword-only dataclass per message.

The same classes describe what was received (from ``Connection.next_event``) and
what to send (``Connection.send``); names say what happened on the wire. Requests
flow client -> server, replies server -> client (see protocol.md for the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class EntryKind(IntEnum):
    """What a name refers to, in listings and STAT replies."""

    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    OTHER = 4


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One directory entry."""

    name: str
    """Last path component (for STAT: the path as requested)."""
    kind: EntryKind
    size: int
    """Bytes; 0 for directories."""
    mtime_ns: int
    """Modification time, nanoseconds since the epoch."""


# ---- client -> server -------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class HelloOffered:
    """The client's opening: the range of versions it speaks."""

    min_version: int
    max_version: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PutRequested:
    """An upload begins; DATA frames and END (or ABORT) follow."""

    path: str
    size: int
    """Exact number of bytes that will follow."""
    mtime_ns: int
    """Modification time to give the file; -1 keeps the server's clock."""
    exclusive: bool
    """Refuse if the name exists (no-clobber)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FileAborted:
    """The sender gives up on the current upload; nothing is committed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GetRequested:
    """Download a file."""

    path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadVerified:
    """The client reports the digest it computed over a download (no reply)."""

    digest: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class ListRequested:
    """List a directory ("" is the root)."""

    path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class StatRequested:
    """Size, mtime and digest of one name ("" is the root)."""

    path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoveRequested:
    """Remove a file or an empty directory."""

    path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MkdirRequested:
    """Create a directory; with ``parents`` also missing parents, and no error if it exists."""

    path: str
    parents: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class MoveRequested:
    """Rename ``source`` to ``target`` (into it, when ``target`` is a directory)."""

    source: str
    target: str


# ---- both directions ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class FileData:
    """A run of file bytes.

    Received data is a view into the caller's receive buffer and is valid only until
    the next ``receive_data`` call: consume it (write, hash) before reading again.
    """

    data: bytes | memoryview


@dataclass(frozen=True, kw_only=True, slots=True)
class FileEnded:
    """End of a file's bytes, with the sender's xxh3-128 digest of all of them."""

    digest: bytes


# ---- server -> client -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class HelloAccepted:
    """The server's answer to HELLO."""

    version: int
    max_frame_bytes: int
    read_only: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class PutCommitted:
    """The upload is verified and durable at its final name; the digest the server computed."""

    digest: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class FileStarted:
    """A download begins: DATA frames and END (or ERROR) follow."""

    size: int
    mtime_ns: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Listed:
    """A batch of directory entries; more batches may follow, then ListEnded."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class ListEnded:
    """The listing is complete."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Stated:
    """Answer to STAT; ``digest`` is all zeros for anything but a regular file."""

    entry: Entry
    digest: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Done:
    """Success of REMOVE, MKDIR or MOVE."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Failed:
    """The request failed; ``code`` is from protocol.md's table (errors.py)."""

    code: int
    message: str


# ---- pseudo-events (never on the wire) --------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection cleanly, at a frame boundary."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NeedData:
    """``next_event`` has nothing more until ``receive_data`` is called."""


NEED_DATA = NeedData()

Request = (
    HelloOffered
    | PutRequested
    | FileAborted
    | GetRequested
    | DownloadVerified
    | ListRequested
    | StatRequested
    | RemoveRequested
    | MkdirRequested
    | MoveRequested
)
Reply = HelloAccepted | PutCommitted | FileStarted | Listed | ListEnded | Stated | Done | Failed
Event = Request | Reply | FileData | FileEnded
