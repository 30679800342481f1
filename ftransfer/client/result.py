"""What a client call returns, the same for every transport.

Theory of operation
-------------------
``TransferResult`` is one completed transfer: the remote path, the local one, the
bytes, the seconds, the digest, the transport, whether both ends verified the
digest (TFTP carries none), and for the datagram transports the figures of the
path (``TransferStats``: retransmissions, RTT, loss, ...). ``Stat`` is what a name
is, with the server's digest for a file. ``Progress`` is what receives progress.
"""

from __future__ import annotations

import builtins

from .._records import Record
from ..errors import FtransferError
from ..storage.entry import Entry, EntryKind


class TransferStats(Record):
    """What the datagram transports tell of the path (None where not measured)."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    retransmitted: int = 0
    duplicates: int = 0
    corrupt_dropped: int = 0
    rejected: int = 0
    """Sealed UDP: datagrams dropped unopened (failed authentication, replayed, or
    not under this request's ticket)."""
    sealed: bool = False
    """UDP: every datagram was encrypted and authenticated (not --insecure)."""
    timeouts: int = 0
    srtt_ms: float | None = None
    """Smoothed round-trip time."""
    loss_estimate: float | None = None
    """The share of datagrams lost on the way (UDP)."""
    chunk_bytes: int | None = None
    """UDP: payload per datagram, as agreed."""
    blksize: int | None = None
    """TFTP: block size, as agreed."""
    windowsize: int | None = None
    """TFTP: blocks per ACK, as agreed."""
    acks_received: int | None = None
    """UDP upload: acknowledgements the sender received."""


class TransferResult(Record):
    """One completed transfer."""

    path: str
    """The remote path."""
    local: str
    """The local path, or "-" for a stream."""
    bytes: int
    seconds: float
    digest: builtins.bytes
    """The file's digest (checksum.py; for TFTP: of the bytes this side sent or
    received)."""
    transport: str
    """"tcp", "udp" or "tftp"."""
    verified: bool = True
    """Both ends computed the digest and they matched (TFTP carries none: False)."""
    stats: TransferStats | None = None
    resumed_from: int = 0
    """A resumed transfer: the bytes before this offset were already there (not
    moved again); ``bytes`` is still the file's size."""

    @property
    def moved(self) -> int:
        """The bytes this transfer moved (a resume moves only the rest)."""
        return self.bytes - self.resumed_from

    @property
    def bytes_per_second(self) -> float:
        return self.moved / max(self.seconds, 1e-9)


class Stat(Record):
    """What a remote name is; for a regular file, the xxh3-128 the server computed."""

    entry: Entry
    digest: bytes | None

    @property
    def kind(self) -> EntryKind:
        return self.entry.kind

    @property
    def size(self) -> int:
        return self.entry.size

    @property
    def mtime_ns(self) -> int:
        return self.entry.mtime_ns

    @property
    def mode(self) -> int:
        return self.entry.mode

    @property
    def is_dir(self) -> bool:
        return self.entry.kind is EntryKind.DIRECTORY


class Progress:
    """Receives transfer progress; override what you need (the CLI draws bars with
    tqdm). The default does nothing."""

    def batch_started(self, files: int, total_bytes: int) -> None:
        """A recursive or many-file transfer is planned: this many files, bytes."""

    def skipped(self, message: str) -> None:
        """A recursive transfer left an entry out (a symlink, a special file)."""

    def unchanged(self, files: int, skip: str) -> None:
        """``files`` were already there (``skip``: "update" or "checksum"): not sent."""

    def file_started(self, name: str, size: int | None) -> None:
        """A file's transfer starts (``size`` None: not known)."""

    def resumed(self, offset: int) -> None:
        """The file just started resumes at ``offset``: the bytes before it were
        already there (no ``advance`` is called for them)."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more were sent or received."""

    def file_done(self) -> None:
        """The file's transfer ended (well or not)."""

    def file_outcome(self, outcome: TransferResult | FtransferError) -> None:
        """``put_many`` and ``get_many``: one file's outcome, once per file, as soon as it is known:
        over UDP and TFTP when its request ends, over TCP when its reply is read
        (between the frames of later files, or after the last); in the files'
        order. A failure is passed here, not raised."""
