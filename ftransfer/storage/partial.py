"""Resumable writes: a partial file and its journal, kept across an interruption.

Theory of operation
-------------------
``PartialWriter`` is an ``AtomicWriter`` (atomic.py) whose temporary has a name
that can be found again, and which survives the writer:

    .ftransfer-part-<key>      the bytes received so far
    .ftransfer-part-<key>.j    their journal (journal.py): what they are for,
                               and the digest of each whole chunk

``key`` is derived from the *binding* (on a server the user and the name; on a
client the server, the user and the remote path), so the next transfer to the
same place looks in one spot. As bytes pass, the tree hasher (checksum.py)
reports each chunk that fills up; the writer then makes the bytes durable
(fdatasync, when it syncs, in a flusher thread of its own so that a server's
event loop never waits on the disk) and only then appends the chunk's record, so
a journal never promises bytes the partial may lack after a crash.

A transfer that does not end in a commit (a lost connection, Ctrl-C, a kill, an
ABORT) keeps both files; one that fails verification, or is refused, removes
them. A commit renames the partial to its final name, like any temporary, and
removes the journal.

Resuming (``Resume.offset`` > 0) is allowed only when the journal's header
matches exactly (binding, size, mtime_ns, transfer id), its first record is the
digest of the source's first chunk, it holds at least ``offset / CHUNK_BYTES``
records, and it is younger than its time to live; then the partial is cut back
to ``offset`` and the hasher resumes from the journal's digests, so nothing
before ``offset`` is read again. Anything else is ``ResumeRefused`` (the peer
starts from 0). A fresh resumable write (offset 0) replaces whatever partial was
there. One writer at a time: the journal is held with flock, and a writer that
finds it held is refused (``PartialBusy``) and the caller writes an ordinary,
non-resumable temporary instead, so two clients never write one partial.

``inspect`` answers "how much of this do you have?" without writing: the offset
a resume may start at and the prefix digest both sides compare.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Callable

from .._records import Record
from ..checksum import CHUNK_BYTES, ZERO_DIGEST, TreeHasher, digest_bytes, key_hex, prefix_digest
from ..config import PARTIAL_PREFIX
from ..errors import FtransferError, ResumeRefused
from .atomic import AtomicWriter, Directory, os_error
from .journal import (
    Binding,
    Contents,
    Header,
    append_record,
    keep_records,
    read_journal,
    start_journal,
)

JOURNAL_SUFFIX = ".j"


class PartialBusy(FtransferError):
    """Another transfer is writing this partial right now."""

    code = 41


class Resume(Record):
    """What binds a resumable write (storage/partial.py), and where its bytes start."""

    binding: dict[str, str]
    """Who and where: on a server the user and the name."""
    transfer_id: bytes
    """16 random bytes chosen by the side that keeps the transfer's record."""
    first_digest: bytes
    """The source's first-chunk digest (ZERO_DIGEST when not known: a fresh write)."""
    offset: int = 0
    """Where the bytes that follow start: 0, or a multiple of CHUNK_BYTES."""


class Probe(Record):
    """How much of a resumable transfer a partial holds."""

    offset: int
    prefix: bytes
    """prefix_digest of the chunks before ``offset`` (ZERO_DIGEST at 0)."""


def binding_bytes(binding: Binding) -> bytes:
    """A canonical encoding of a binding (what its key is derived from)."""
    return repr(sorted(binding.items())).encode("utf-8", "surrogateescape")


def partial_leaf(binding: Binding) -> str:
    """The partial's name in its directory."""
    return PARTIAL_PREFIX + key_hex(binding_bytes(binding))


def _usable(
    contents: Contents | None, resume: Resume, size: int, mtime_ns: int, age_s: float, ttl_s: float
) -> list[bytes]:
    """The chunk digests a resume may build on (empty: none)."""
    if contents is None or age_s > ttl_s:
        return []
    header = contents.header
    wanted = Header(
        binding=resume.binding, size=size, mtime_ns=mtime_ns, transfer_id=resume.transfer_id
    )
    if header != wanted or not contents.chunks or contents.chunks[0] != resume.first_digest:
        return []
    return contents.chunks[: size // CHUNK_BYTES]


def inspect(
    directory: Directory, resume: Resume, *, size: int, mtime_ns: int, ttl_s: float
) -> Probe:
    """Where a resume of this transfer could start, read without writing."""
    leaf = partial_leaf(resume.binding) + JOURNAL_SUFFIX
    try:
        fd = directory.open_rw(leaf, os.O_APPEND) if _exists(directory, leaf) else -1
    except OSError:
        fd = -1
    if fd < 0:
        return Probe(offset=0, prefix=ZERO_DIGEST)
    try:
        st = os.fstat(fd)
        chunks = _usable(read_journal(fd), resume, size, mtime_ns, time.time() - st.st_mtime, ttl_s)
    finally:
        os.close(fd)
    return Probe(offset=len(chunks) * CHUNK_BYTES, prefix=prefix_digest(chunks))


LOCK_ATTEMPTS = 3


def _lstat_or_none(directory: Directory, leaf: str) -> os.stat_result | None:
    try:
        return directory.lstat(leaf)
    except OSError:
        return None


def _exists(directory: Directory, leaf: str) -> bool:
    try:
        return stat.S_ISREG(directory.lstat(leaf).st_mode)
    except OSError:
        return False


class PartialWriter(AtomicWriter):
    """An AtomicWriter whose temporary is a findable, journaled partial."""

    def __init__(
        self,
        directory: Directory,
        leaf: str,
        *,
        resume: Resume,
        ttl_s: float,
        size: int,
        mtime_ns: int,
        mode: int | None,
        exclusive: bool,
        fsync: bool,
        limit: int | None = None,
        label: str | None = None,
    ) -> None:
        self._resume, self._ttl_s = resume, ttl_s
        self._journal_fd = -1
        self._keep = True  # an interrupted write keeps its partial
        self._flusher: _Flusher | None = None
        super().__init__(
            directory,
            leaf,
            size=size,
            mtime_ns=mtime_ns,
            mode=mode,
            exclusive=exclusive,
            fsync=fsync,
            limit=limit,
            label=label,
        )

    @property
    def resumed_from(self) -> int:
        return self._resume.offset

    def _open_temp(self) -> None:
        resume, size = self._resume, self._size
        assert size is not None
        self._temp = partial_leaf(resume.binding)
        jfd = self._locked_journal()
        try:
            self._fd = self._open_data(jfd, resume, size)
        except BaseException:
            os.close(jfd)
            raise
        self._journal_fd = jfd
        self._hasher.on_chunk = self._journal_chunk

    def _locked_journal(self) -> int:
        """The journal, held with flock: the one at its name now (a writer that
        ends unlinks it before it lets the lock go, but one that took the lock in
        between would hold an unlinked file: that one tries again)."""
        leaf = self._temp + JOURNAL_SUFFIX
        for _attempt in range(LOCK_ATTEMPTS):
            jfd = self._dir.open_rw(leaf, os.O_APPEND)
            try:
                fcntl.flock(jfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(jfd)
                raise PartialBusy(f"{self._label}: another transfer is writing it") from None
            held, named = os.fstat(jfd), _lstat_or_none(self._dir, leaf)
            if named is not None and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                return jfd
            os.close(jfd)
        raise PartialBusy(f"{self._label}: another transfer is replacing it")

    def _open_data(self, jfd: int, resume: Resume, size: int) -> int:
        offset = resume.offset
        if not offset:
            start_journal(
                jfd,
                Header(
                    binding=resume.binding,
                    size=size,
                    mtime_ns=self._mtime_ns,
                    transfer_id=resume.transfer_id,
                ),
            )
            fd = self._dir.open_rw(self._temp)
            os.ftruncate(fd, 0)
            self._written = 0
            return fd
        contents = read_journal(jfd)
        age = time.time() - os.fstat(jfd).st_mtime
        chunks = _usable(contents, resume, size, self._mtime_ns, age, self._ttl_s)
        if offset % CHUNK_BYTES or len(chunks) * CHUNK_BYTES < offset:
            raise ResumeRefused(f"{self._label}: no partial to resume from {offset}")
        assert contents is not None
        kept = chunks[: offset // CHUNK_BYTES]
        try:
            fd = self._dir.open_rw(self._temp, create=False)
        except FileNotFoundError:
            raise ResumeRefused(f"{self._label}: its partial is gone") from None
        try:
            self._check_tail(fd, kept)
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        keep_records(jfd, contents.records_at, len(kept))
        self._hasher = TreeHasher(chunks=kept)
        self._written = offset
        return fd

    def _check_tail(self, fd: int, kept: list[bytes]) -> None:
        """The journal is a promise about the partial's bytes: hold it to it where a
        lost write would show (a partial cut short or replaced, a tail a power cut
        took back under --no-fsync): the partial must be that long, and its last
        journaled chunk, read again (the one chunk this side reads twice), must
        have its digest."""
        offset = len(kept) * CHUNK_BYTES
        if os.fstat(fd).st_size < offset:
            raise ResumeRefused(f"{self._label}: its partial is shorter than its journal")
        last = os.pread(fd, CHUNK_BYTES, offset - CHUNK_BYTES)
        if digest_bytes(last) != kept[-1]:
            raise ResumeRefused(f"{self._label}: its partial does not hold what its journal says")

    def _journal_chunk(self, index: int, digest: bytes) -> None:
        """(Under the writer's lock, from write.) The chunk's bytes are written:
        make them durable, then say so: the flusher's work, off the caller's
        thread (a server's event loop must not wait on the disk). Always synced,
        even under --no-fsync: a journal ahead of its data would splice zeros."""
        if self._flusher is None:
            self._flusher = _Flusher(self._fd, self._journal_fd, self._resume.transfer_id)
        self._flusher.submit(index, digest)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._bound is not None and self._written + len(data) > self._bound:
            self._keep = False  # more than declared: the write fails and is not resumable
        super().write(data)

    def commit(self, expected_digest: bytes) -> bytes:
        self._keep = False  # committed or refused: the partial has no future either way
        flusher, self._flusher = self._flusher, None
        failure = flusher.finish() if flusher is not None else None
        if failure is not None:  # (a sync failed: the bytes may not be on disk)
            self.abort()
            raise os_error(failure, self._label)
        if self._journal_fd >= 0:
            os.ftruncate(self._journal_fd, 0)  # no promise survives the rename
        return super().commit(expected_digest)

    def _remove_temp(self) -> None:
        if self._keep:
            return  # for the next attempt
        super()._remove_temp()
        self._unlink_journal()

    def _unlink_journal(self) -> None:
        try:  # noqa: SIM105 (not contextlib.suppress: a small transfer imports none)
            self._dir.unlink(self._temp + JOURNAL_SUFFIX)
        except FileNotFoundError:
            pass

    def _end(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.finish()  # (its last records, before the descriptors close)
        jfd, self._journal_fd = self._journal_fd, -1
        try:
            if self.committed and jfd >= 0:  # (the first _end after it)
                self._unlink_journal()
            super()._end()  # the data closed, the names removed unless kept...
        finally:
            if jfd >= 0:
                os.close(jfd)  # ...and only then the lock goes (see _locked_journal)


class _Flusher:
    """One thread per syncing partial: for each finished chunk, in order,
    fdatasync the partial, then append the chunk's record, so a journal never
    promises bytes a power cut could take back. The writer's thread goes on
    receiving meanwhile; ``finish`` waits for what is queued (at most a chunk or
    two) before the writer closes the descriptors."""

    def __init__(self, fd: int, journal_fd: int, transfer_id: bytes) -> None:
        import queue
        import threading

        self._fd, self._journal_fd, self._id = fd, journal_fd, transfer_id
        self._queue: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ftransfer-journal", daemon=True)
        self._thread.start()

    def submit(self, index: int, digest: bytes) -> None:
        self._queue.put((index, digest))

    def finish(self) -> OSError | None:
        """Wait for what is queued; the error that stopped the flusher, if any."""
        self._queue.put(None)
        self._thread.join()
        return self.failure

    failure: OSError | None = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.failure is not None:
                continue  # (a failed sync journals nothing more: a resume starts earlier)
            try:
                os.fdatasync(self._fd)
                append_record(self._journal_fd, self._id, *item)
            except OSError as exc:
                self.failure = exc


def sweep_partials(directory: Directory, ttl_s: float, now_s: float | None = None) -> int:
    """Remove the partials of ``directory`` untouched for ``ttl_s`` (neither the
    data nor the journal) and not being written; returns how many."""
    now = time.time() if now_s is None else now_s
    removed = 0
    stems = {
        n.removesuffix(JOURNAL_SUFFIX) for n in directory.names() if n.startswith(PARTIAL_PREFIX)
    }
    for stem in stems:
        pair = [stem, stem + JOURNAL_SUFFIX]
        touched = [st.st_mtime for st in map(_regular_stat(directory), pair) if st is not None]
        if not touched or now - max(touched) <= ttl_s:
            continue
        if _exists(directory, pair[1]) and not _lock_free(directory, pair[1]):
            continue
        for leaf in pair:
            unlink_quietly(directory.unlink, leaf)
        removed += 1
    return removed


def unlink_quietly(unlink: Callable[[str], None], name: str) -> bool:
    """``unlink(name)``; False if it failed (gone already, or not ours)."""
    try:  # (not contextlib.suppress: a small transfer imports no contextlib)
        unlink(name)
    except OSError:
        return False
    return True


def _regular_stat(directory: Directory) -> Callable[[str], os.stat_result | None]:
    def lstat(leaf: str) -> os.stat_result | None:
        try:
            st = directory.lstat(leaf)
        except OSError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    return lstat


def _lock_free(directory: Directory, leaf: str) -> bool:
    try:
        fd = directory.open_rw(leaf, os.O_APPEND)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
