"""Resuming on the client: a record of each upload's chunks, partials of downloads.

Theory of operation
-------------------
A transfer resumes without reading again what it had moved, on both sides, by
keeping the tree digest's chunk digests (checksum.py) in journals
(storage/journal.py):

*Uploads.* While a file over one chunk is sent, each chunk's digest is appended
to an ``UploadRecord`` in the client's state directory
(``$XDG_STATE_HOME/ftransfer/uploads``), bound to the server, the user, the
remote name and the local file (its path, device and inode, size and mtime),
under a random transfer id that the server binds its partial to (PUT_AT). A
chunk is recorded as soon as it is read, before its bytes are sent, so the
record is never behind the server's journal. The next upload of the same file
to the same place finds the record, checks the source is the same (size, mtime,
the digest of its first chunk: the one chunk read again), asks the server what
it holds (PARTIAL: one round trip), compares the prefix digest of the chunks
the server has with its own, and sends the rest (PUT_AT) with the hasher
resumed from its record. Any doubt (a changed source, a server without the
partial, another prefix) starts over from 0 under a new id. A commit removes
the record; a record untouched for the partial TTL is not used. The local file's
identity includes its ctime, which no user can set back (an mtime restored by
``touch -r`` or ``cp -p`` does not make a changed file look the same). A record
that cannot be written (a full state directory) is dropped: the upload goes on,
not resumable.

*Downloads.* A download over one chunk is written as a partial beside its target
(storage/partial.py), bound to the server, the user, the remote name and the
local name. The next download to the same target finds it and asks for the rest
(GET_AT: the offset, the size and mtime the file had, the prefix digest); the
server answers FILE_AT with the offset it accepts (0 when the file changed), so
the resume costs no extra round trip.

Two processes never share a record or a partial: both are held with flock, and
the second transfer runs as an ordinary one.
"""

from __future__ import annotations

import fcntl
import os
import time

from ..checksum import (
    CHUNK_BYTES,
    ZERO_DIGEST,
    Hasher,
    TreeHasher,
    digest_bytes,
    key_hex,
    prefix_digest,
)
from ..config import PARTIAL_TTL_S
from ..errors import RemoteProtocolError
from ..proto.tcp import events as ev
from ..storage.journal import (
    Header,
    append_record,
    keep_records,
    read_journal,
    start_journal,
)
from ..storage.partial import (
    JOURNAL_SUFFIX,
    Resume,
    binding_bytes,
    partial_leaf,
    unlink_quietly,
)
from .local import LocalFile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..proto.udp.packets import Accept, Resumption

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "ftransfer")


class Resumes:
    """Where one client keeps what a resume needs, for one server and user."""

    def __init__(
        self,
        server: str,
        user: str,
        *,
        ttl_s: float = PARTIAL_TTL_S,
        state_dir: str | None = None,
    ) -> None:
        self.server, self.user, self.ttl_s = server, user, ttl_s
        self.uploads_dir = os.path.join(state_dir or default_state_dir(), "uploads")

    def upload(self, source: LocalFile, remote: str) -> UploadRecord | None:
        """The record of this upload (found, or new); None for a file of one chunk,
        or when another process holds the record or it cannot be kept."""
        if source.size <= CHUNK_BYTES:
            return None
        binding = {
            "server": self.server,
            "user": self.user,
            "remote": remote,
            "local": os.path.abspath(source.path),
            # (ctime: a user can set an mtime back, as touch -r, cp -p and rsync -t
            # do, but not a ctime: any change to the file moves it)
            "file": f"{source.device}:{source.inode}:{source.ctime_ns}",
        }
        try:
            return UploadRecord.open(self.uploads_dir, binding, source, self.ttl_s)
        except OSError:
            return None  # (no state directory: the upload is not resumable)

    def download(self, target: str, remote: str) -> DownloadResume:
        binding = {
            "server": self.server,
            "user": self.user,
            "remote": remote,
            "local": os.path.basename(target),
        }
        return DownloadResume(target, binding, self.ttl_s)


def _age_s(fd: int) -> float:
    return time.time() - os.fstat(fd).st_mtime


class UploadRecord:
    """The chunks this client read of a file it uploads, and the transfer's id."""

    def __init__(self, fd: int, path: str, transfer_id: bytes, chunks: list[bytes], at: int):
        self._fd, self.path, self.transfer_id = fd, path, transfer_id
        self.chunks, self._records_at = chunks, at
        self.first_digest = ZERO_DIGEST
        """The source's first-chunk digest, read now (only when there is a resume)."""

    @classmethod
    def open(
        cls, directory: str, binding: dict[str, str], source: LocalFile, ttl_s: float
    ) -> UploadRecord | None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, key_hex(binding_bytes(binding)) + JOURNAL_SUFFIX)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | _CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            return cls._from(fd, path, binding, source, ttl_s)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _from(
        cls, fd: int, path: str, binding: dict[str, str], source: LocalFile, ttl_s: float
    ) -> UploadRecord:
        contents = read_journal(fd)
        if contents is not None and _age_s(fd) <= ttl_s and contents.chunks:
            header = contents.header
            same = (header.binding, header.size, header.mtime_ns) == (
                binding,
                source.size,
                source.mtime_ns,
            )
            first = digest_bytes(source.read(0, CHUNK_BYTES)) if same else None
            if first is not None and first == contents.chunks[0]:
                record = cls(fd, path, header.transfer_id, contents.chunks, contents.records_at)
                record.first_digest = first
                return record
        transfer_id = os.urandom(16)
        header = Header(
            binding=binding, size=source.size, mtime_ns=source.mtime_ns, transfer_id=transfer_id
        )
        return cls(fd, path, transfer_id, [], start_journal(fd, header))

    @property
    def resumable(self) -> bool:
        """There is something to resume: ask the server (PARTIAL) first."""
        return bool(self.chunks)

    def partial_request(self, remote: str, source: LocalFile) -> ev.PartialRequested:
        return ev.PartialRequested(
            path=remote,
            size=source.size,
            mtime_ns=source.mtime_ns,
            transfer_id=self.transfer_id,
            first_digest=self.first_digest,
        )

    def start(self, held: ev.PartialHeld | None, source: LocalFile) -> tuple[int, TreeHasher]:
        """Where the upload starts, given what the server holds (None: nothing
        asked), and the hasher that goes on from there and records each chunk."""
        count = 0
        if held is not None:
            if held.offset % CHUNK_BYTES or held.offset > source.size:
                raise RemoteProtocolError(
                    f"PARTIAL_OK offset {held.offset} is no chunk boundary of the file"
                )
            count = held.offset // CHUNK_BYTES
            self._catch_up(count, source)
            if count and prefix_digest(self.chunks[:count]) != held.prefix:
                count = 0  # the server's partial is not of what we read: start over
        keep_records(self._fd, self._records_at, count)
        del self.chunks[count:]
        return count * CHUNK_BYTES, TreeHasher(chunks=self.chunks, on_chunk=self._record)

    def _catch_up(self, count: int, source: LocalFile) -> None:
        """Read the chunks the server has and the record lacks (a record cut by a
        kill between reading a chunk and writing its record: at most one)."""
        while len(self.chunks) < count:
            index = len(self.chunks)
            digest = digest_bytes(source.read(index * CHUNK_BYTES, CHUNK_BYTES))
            self._record(index, digest)
            self.chunks.append(digest)

    def _record(self, index: int, digest: bytes) -> None:
        if self._fd < 0:
            return  # (given up: see below)
        try:
            append_record(self._fd, self.transfer_id, index, digest)
        except OSError:
            # The state directory is full or failing: this upload goes on, but can
            # no longer be resumed from a record that may be behind.
            self.done()

    def done(self) -> None:
        """The upload committed: the record has no further use."""
        unlink_quietly(os.unlink, self.path)
        self.close()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # (releases the lock)


class DownloadResume:
    """What a download to ``target`` may resume from (read before its GET)."""

    def __init__(self, target: str, binding: dict[str, str], ttl_s: float) -> None:
        self.binding = binding
        self.offset = 0
        self._header: Header | None = None
        self._first = ZERO_DIGEST
        self._prefix = ZERO_DIGEST
        path = os.path.join(os.path.dirname(target), partial_leaf(binding) + JOURNAL_SUFFIX)
        try:
            fd = os.open(path, os.O_RDONLY | _CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return
        try:
            contents = read_journal(fd)
            if contents is None or _age_s(fd) > ttl_s or contents.header.binding != binding:
                return
            count = min(len(contents.chunks), contents.header.size // CHUNK_BYTES)
        finally:
            os.close(fd)
        if count:
            self._header = contents.header
            self.offset = count * CHUNK_BYTES
            self._first = contents.chunks[0]
            self._prefix = prefix_digest(contents.chunks[:count])

    def request(self, remote: str) -> ev.GetRequested:
        """GET, or GET_AT when a partial of this download is here."""
        header = self._header
        if header is None:
            return ev.GetRequested(path=remote)
        return ev.GetRequested(
            path=remote,
            offset=self.offset,
            size=header.size,
            mtime_ns=header.mtime_ns,
            prefix=self._prefix,
        )

    def resume_for(self, started: ev.FileStarted) -> Resume | None:
        """How the sink writes the file the server began to send: the rest of the
        partial, a new partial (a file over one chunk), or none."""
        return self.resume_at(started.size, started.mtime_ns, started.offset or 0)

    def resume_at(self, size: int, mtime_ns: int, offset: int) -> Resume | None:
        """``resume_for`` of a file of ``size`` and ``mtime_ns`` whose bytes come
        from ``offset`` (a FILE_AT, or a UDP ACCEPT)."""
        header = self._header
        if offset:
            if header is None or offset != self.offset or (size, mtime_ns) != self.known:
                raise RemoteProtocolError(f"data from {offset}, which this client did not ask")
            return Resume(
                binding=self.binding,
                transfer_id=header.transfer_id,
                first_digest=self._first,
                offset=offset,
            )
        if size > CHUNK_BYTES:
            fresh = os.urandom(16)
            return Resume(binding=self.binding, transfer_id=fresh, first_digest=ZERO_DIGEST)
        return None

    @property
    def known(self) -> tuple[int, int] | None:
        """The size and mtime_ns of the file the partial is of (None: no partial)."""
        header = self._header
        return None if header is None else (header.size, header.mtime_ns)

    @property
    def offer(self) -> Resumption | None:
        """UDP: the INITIAL's resume extension for this download (None: no partial)."""
        from ..proto.udp.packets import Resumption

        if self._header is None:
            return None
        return Resumption(offset=self.offset, transfer_id=bytes(16), digest=self._prefix)

    refusal = (1, "the server's data start at an offset this client did not ask")
    """How the request ends when ``begin`` refuses what the server offers."""

    def begin(self, accept: Accept) -> tuple[int, Hasher | None]:
        """UDP (handshake.ResumePlan): where the server's data start: the offer,
        or 0 (the file changed); anything else ends the request."""
        got = accept.resume.offset if accept.resume is not None else 0
        return (got if got in (0, self.offset) else -1), None


class UploadPlan:
    """UDP (handshake.ResumePlan) for an upload with a record: the offer in
    INITIAL, and where to start once the server says what it holds."""

    def __init__(self, record: UploadRecord, source: LocalFile) -> None:
        from ..proto.udp.packets import Resumption

        self.record, self.source = record, source
        offset = len(record.chunks) * CHUNK_BYTES if record.resumable else 0
        offset = min(offset, source.size // CHUNK_BYTES * CHUNK_BYTES)
        first = record.first_digest if offset else ZERO_DIGEST
        self.offer = Resumption(offset=offset, transfer_id=record.transfer_id, digest=first)
        self.start = 0

    refusal = (31, "the server's partial is not of this file: starting over")
    """How the request ends when ``begin`` refuses what the server offers."""

    def begin(self, accept: Accept) -> tuple[int, Hasher | None]:
        got = accept.resume
        if got is not None and (got.offset > self.offer.offset or got.offset % CHUNK_BYTES):
            self.refusal = (1, f"the server offered offset {got.offset}, not at most ours")
            return -1, None
        held = None if got is None else ev.PartialHeld(offset=got.offset, prefix=got.digest)
        start, hasher = self.record.start(held, self.source)
        if got is not None and start != got.offset:
            return -1, None  # the server holds other bytes: this request ends, and is retried
        self.start = start
        return start, hasher


def resumes_for(address: str, user: str, *, enabled: bool, state_dir: str | None) -> Resumes | None:
    """The client's resume context for one server and user (None: --no-resume)."""
    return Resumes(address, user, state_dir=state_dir) if enabled else None
