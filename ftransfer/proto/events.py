"""The event vocabulary that every core shares: what happened to a request.

Theory of operation
-------------------
A core (proto/machine.py) reports what happened through ``next_event()``. The TCP
core's events mirror its frames (proto/tcp/events.py, h11-style); the datagram
cores (UDP, TFTP) report transfers, and they use these records, so one client
and one server handle every transport the same way:

    Accepted      the peer took the request; a transfer of ``size`` bytes follows
    DataReceived  the next in-order bytes of the file
    EndReceived   every byte is in, with the sender's digest: decide, then finish()
    Completed     the transfer ended well (the receiver's digest, when there is one)
    Failed        it ended with an error: ``code`` from protocol.md's table, which
                  errors.error_from_code turns into the exception (TCP's ERROR
                  frame is this record too)

Records are frozen and named in the past tense. ``session`` tells which session an
event belongs to where one core carries several (the UDP server endpoint); it is
0 elsewhere. Events are never changed after they are made.
"""

from __future__ import annotations

from .._records import Record


class Accepted(Record):
    """The server accepted the request."""

    size: int
    """Bytes the server will send (GET, LIST, STAT), or 0."""
    mtime_ns: int = -1
    mode: int | None = None
    """Permission bits of the file the server sends, when it says."""
    chunk_bytes: int = 0
    """UDP: the payload size the server chose."""
    session: int = 0
    offset: int = 0
    """A resumed transfer: the session's data start at this byte of the file."""


class DataReceived(Record):
    """In-order bytes of the file; several datagrams' worth may come as one."""

    data: bytes | bytearray
    final: bool = False
    """TFTP: the short block that ends the file (UDP ends with EndReceived)."""
    session: int = 0


class EndReceived(Record):
    """Every byte has arrived; the sender's digest. The application checks it,
    commits or not, and reports its verdict to the core (``finish``)."""

    size: int
    digest: bytes
    session: int = 0


class Completed(Record):
    """The transfer ended well."""

    digest: bytes = b""
    """The receiver's xxh3-128 of what it committed (empty where none: TFTP, REMOVE)."""
    session: int = 0


class Failed(Record):
    """The request or transfer ended with an error (ours or the peer's)."""

    code: int
    """The error code (protocol.md, "Error codes")."""
    message: str
    digest: bytes = b""
    """UDP: the receiver's digest of what it got, when the verdict was a mismatch."""
    session: int = 0


DatagramEvent = Accepted | DataReceived | EndReceived | Completed | Failed
