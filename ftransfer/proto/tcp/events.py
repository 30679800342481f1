"""Events of the TCP protocol: one frozen, keyword-only record per message.

The same classes describe what was received (from ``Connection.next_event``) and
what to send (``Connection.send``); names say what happened on the wire. Requests
flow client -> server, replies server -> client (see protocol.md for the bytes).
An ERROR frame is the shared ``Failed`` record (proto/events.py), as it is for the
datagram cores.
"""

from __future__ import annotations

from enum import IntEnum

from ..._records import Record
from ..events import Failed as Failed


class EntryKind(IntEnum):
    """What a name refers to, in listings and STAT replies."""

    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    OTHER = 4


class Entry(Record):
    """One directory entry."""

    name: str
    """Last path component (for STAT: the path as requested)."""
    kind: EntryKind
    size: int
    """Bytes; 0 for directories."""
    mtime_ns: int
    """Modification time, nanoseconds since the epoch."""
    mode: int
    """Permission bits (0o777 at most)."""


# ---- client -> server -------------------------------------------------------


class HelloOffered(Record):
    """The client's opening: the range of versions it speaks."""

    min_version: int
    max_version: int


class LoginRequested(Record):
    """The client logs in as ``user`` (the first request after HELLO, if any)."""

    user: str
    password: str

    def __repr__(self) -> str:  # the password never reaches a log or a traceback
        return f"LoginRequested(user={self.user!r}, password=<hidden>)"


class PutRequested(Record):
    """An upload begins; DATA frames and END (or ABORT) follow."""

    path: str
    size: int
    """Exact number of bytes that will follow."""
    mtime_ns: int
    """Modification time to give the file; -1 keeps the server's clock."""
    mode: int
    """Permission bits of the source (the server applies its umask)."""
    exclusive: bool
    """Refuse if the name exists (no-clobber)."""
    offset: int = 0
    """PUT_AT: where the DATA that follows starts (the server has the rest)."""
    transfer_id: bytes = b""
    """PUT_AT: the resumable transfer's random id (empty: a plain PUT, not resumable)."""
    first_digest: bytes = b""
    """PUT_AT: the digest of the source's first chunk (zeros when starting at 0)."""


class PartialRequested(Record):
    """PARTIAL: how much of this resumable upload does the server hold?"""

    path: str
    size: int
    mtime_ns: int
    transfer_id: bytes
    first_digest: bytes


class PartialHeld(Record):
    """PARTIAL_OK: a PUT_AT may start at ``offset``; ``prefix`` is the digest of
    the chunk digests before it (zeros at 0)."""

    offset: int
    prefix: bytes


class FileAborted(Record):
    """The sender gives up on the current upload; nothing is committed."""


class GetRequested(Record):
    """Download a file (GET), or the rest of one (GET_AT: ``prefix`` set)."""

    path: str
    offset: int = 0
    """GET_AT: the client holds the file's first ``offset`` bytes..."""
    size: int = 0
    mtime_ns: int = -1
    """...of the file as it was then (its size and mtime_ns)..."""
    prefix: bytes = b""
    """...whose chunk digests have this prefix digest (empty: a plain GET)."""


class DownloadVerified(Record):
    """The client reports the digest it computed over a download (no reply)."""

    digest: bytes


class ListRequested(Record):
    """List a directory ("" is the root)."""

    path: str


class StatRequested(Record):
    """Size, mtime and digest of one name ("" is the root)."""

    path: str


class RemoveRequested(Record):
    """Remove a file or an empty directory."""

    path: str


class MkdirRequested(Record):
    """Create a directory; with ``parents`` also missing parents, and no error if it exists."""

    path: str
    parents: bool


class MoveRequested(Record):
    """Rename ``source`` to ``target`` (into it, when ``target`` is a directory)."""

    source: str
    target: str
    exclusive: bool = False
    """Refuse if the final name exists (no-clobber)."""


# ---- both directions ----------------------------------------------------------


class FileData(Record):
    """A run of file bytes.

    Received data is a view into the caller's receive buffer and is valid only until
    the next ``receive_data`` call: consume it (write, hash) before reading again.
    """

    data: bytes | memoryview


class FileEnded(Record):
    """End of a file's bytes, with the sender's digest (checksum.py) of all of them."""

    digest: bytes


class TicketRequested(Record):
    """The keys for a sealed UDP request (TLS connections only, protocol.md 4.2)."""


class PingRequested(Record):
    """A time-stamped echo request (``ftransfer ping --tcp``): PONG echoes it."""

    seq: int
    timestamp_ns: int


# ---- server -> client -----------------------------------------------------------


class HelloAccepted(Record):
    """The server's answer to HELLO."""

    version: int
    max_frame_bytes: int
    read_only: bool
    """Every change will be refused (for a client that has not logged in)."""
    login_required: bool = False
    """Nothing is served to a client that does not log in."""


class PutCommitted(Record):
    """The upload is verified and durable at its final name; the digest the server computed."""

    digest: bytes


class FileStarted(Record):
    """A download begins: DATA frames and END (or ERROR) follow."""

    size: int
    mtime_ns: int
    mode: int
    """Permission bits of the file on the server."""
    offset: int | None = None
    """FILE_AT (the answer to GET_AT): where the DATA starts; None for FILE."""


class Listed(Record):
    """A batch of directory entries; more batches may follow, then ListEnded."""

    entries: tuple[Entry, ...]


class ListEnded(Record):
    """The listing is complete."""


class Stated(Record):
    """Answer to STAT; ``digest`` is all zeros for anything but a regular file."""

    entry: Entry
    digest: bytes


class Done(Record):
    """Success of REMOVE, MKDIR or MOVE."""


class Ponged(Record):
    """Answer to PING: its sequence number and time stamp, unchanged."""

    seq: int
    timestamp_ns: int


class TicketIssued(Record):
    """Answer to TICKET: the ticket id and secret that seal one UDP request of
    this connection's principal (proto/udp/sealed.py); the secret is never shown."""

    ticket: int
    lifetime_s: int
    secret: bytes

    def __repr__(self) -> str:
        return f"TicketIssued(ticket={self.ticket:#018x}, lifetime_s={self.lifetime_s})"


# ---- pseudo-events (never on the wire) --------------------------------------------


class ConnectionClosed(Record):
    """The peer closed the connection cleanly, at a frame boundary."""


class NeedData(Record):
    """``next_event`` has nothing more until ``receive_data`` is called."""


NEED_DATA = NeedData()

Request = (
    HelloOffered
    | LoginRequested
    | PutRequested
    | PartialRequested
    | FileAborted
    | GetRequested
    | DownloadVerified
    | ListRequested
    | StatRequested
    | RemoveRequested
    | MkdirRequested
    | MoveRequested
    | TicketRequested
    | PingRequested
)
Reply = (
    HelloAccepted
    | PutCommitted
    | PartialHeld
    | FileStarted
    | Listed
    | ListEnded
    | Stated
    | Done
    | TicketIssued
    | Ponged
    | Failed
)
Event = Request | Reply | FileData | FileEnded
