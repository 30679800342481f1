"""Sending a file as DATA frames: the one loop both TCP streams run.

Theory of operation
-------------------
``file_frames`` is the logic of sending ``source.size`` bytes as DATA frames, for
the asyncio stream (stream.py) and the blocking one (socket_stream.py) alike, as a
generator of three kinds of request that each stream carries out its own way:

    SendfileFrame(fd, offset, count)       -> bytes the file had   (zero copy)
    CopyFrame(fd, offset, count, hasher)   -> bytes the file had   (read, hash, send)
    WriteFrame(frame bytes)                -> None                 (then drain)

A source with a descriptor is sent with sendfile in frames of up to
MAX_FRAME_BYTES (small files, up to SMALL_FILE_BYTES, in one read and one write:
cheaper than a sendfile round through the kernel), and the digest is computed
from the same range with pread into a reused scratch buffer, unless the source
knows it already. A stream that encrypts (TLS: no sendfile) and can read a range
itself (``copy``, the client's) is asked for CopyFrame instead: it reads the range
through a buffer of its own, hands each piece to the hasher and sends it, so the
file is read once. Otherwise (a source without a descriptor: memory, an object
store; or a stream that does neither) frames of READ_CHUNK_BYTES are read from
the source and written. A source shorter than its size has the current frame completed with
zeros and raises ``FileChanged``; one that fails to read (the source's error, or
an OSError while hashing what sendfile sent) raises ``FileUnreadable`` (its base)
where no frame is half written. The caller sends ERROR 40 in place of END, so the
peer discards the file and the stream stays in step.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

from .._records import Record
from ..checksum import Hasher, hash_range, new_hasher
from ..config import HASH_SCRATCH_BYTES, MAX_FRAME_BYTES, SMALL_FILE_BYTES
from ..errors import FtransferError, StorageIOError
from ..proto.tcp.connection import Connection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class FileSource(Protocol):
        """What is sent: a server Download, or a client's local file."""

        @property
        def size(self) -> int: ...

        @property
        def digest(self) -> bytes | None: ...

        def fileno(self) -> int | None: ...

        def read(self, offset: int, n: int) -> bytes: ...


READ_CHUNK_BYTES = 1 << 20
"""Frames read from a source without a descriptor are this large."""
Progress = Callable[[int], None]
"""Called with the number of bytes just sent or received."""
DataSink = Callable[[bytes | memoryview], None]
"""Consumes received file bytes (write and hash them) before the buffer is reused."""


class SinkFailed(FtransferError):
    """The data sink raised; ``cause`` says why. The stream itself is intact."""

    def __init__(self, cause: FtransferError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class FileUnreadable(StorageIOError):
    """The file could not be read to its end while it was being sent (a read error,
    or it got shorter): the frame in progress is whole, ERROR 40 goes in place of END."""


class FileChanged(FileUnreadable):
    """The file got shorter while it was being sent: ERROR goes in place of END."""


def unreadable(exc: OSError | FtransferError) -> FileUnreadable:
    """The error for a source that failed while it was being sent (protocol.md 5.2:
    always code 40, whatever the store would call the failure elsewhere)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return FileUnreadable(f"the file could not be read while it was being sent: {reason}")


class SendfileFrame(Record):
    """Send a DATA frame of ``count`` bytes of ``fd`` at ``offset`` (header first);
    the answer is how many bytes the file had (the rest is sent as zeros)."""

    fd: int
    offset: int
    count: int


class CopyFrame(Record):
    """Send a DATA frame of ``count`` bytes of ``fd`` at ``offset`` (header first)
    by reading them, giving each piece read to ``hasher`` (None: the digest is
    known) before it is sent; the answer is how many bytes the file had (the rest is
    sent as zeros). A read that fails raises ``unreadable(exc)`` once the frame is
    complete (zeros for the rest)."""

    fd: int
    offset: int
    count: int
    hasher: Hasher | None


class WriteFrame(Record):
    """Write (queue) a whole frame, ``data`` then ``body`` (a DATA frame's header
    and its bytes, not joined here: a TLS stream encrypts them where they are), then
    wait while the peer is behind."""

    data: bytes
    body: bytes = b""


FileOp = SendfileFrame | CopyFrame | WriteFrame


def file_frames(
    conn: Connection,
    source: FileSource,
    scratch: bytearray,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    *,
    sendfile: bool = True,
    copy: bool = False,
    frame_bytes: int = MAX_FRAME_BYTES,
    start: int = 0,
    hasher: Hasher | None = None,
) -> Generator[FileOp, int | None, bytes | None]:
    """The frames of ``source``; returns its digest, or None if ``cancelled()``
    became true between frames (the caller then sends ABORT or ERROR).
    ``sendfile=False`` (a TLS connection: the kernel cannot encrypt) asks for
    CopyFrame if ``copy`` (the stream reads ranges itself), else reads every frame,
    READ_CHUNK_BYTES at a time. ``frame_bytes`` caps a frame (a rate limit keeps
    each frame to a fraction of a second, so the peer never waits a whole 4 MiB
    at a low rate: a read timeout). ``start``: the bytes before it are not sent
    (a resumed transfer); ``hasher`` then knows their chunks, and is used even if
    the source knows its digest (a resumed upload journals its chunks as it goes)."""
    frame_bytes = max(1, min(frame_bytes, MAX_FRAME_BYTES))
    size, known = source.size, source.digest
    if hasher is None:
        hasher = None if known is not None else new_hasher()
    else:
        known = None
    fd = source.fileno() if sendfile or copy else None
    zero_copy = fd is not None and size > SMALL_FILE_BYTES
    copying = zero_copy and not sendfile
    offset = start
    while offset < size:
        if cancelled():
            return None
        if copying:
            assert fd is not None
            count = min(frame_bytes, size - offset)
            got = yield CopyFrame(fd=fd, offset=offset, count=count, hasher=hasher)
            assert got is not None
        elif zero_copy:
            assert fd is not None
            count = min(frame_bytes, size - offset)
            got = yield SendfileFrame(fd=fd, offset=offset, count=count)
            assert got is not None
            if hasher is not None and got == count:
                try:
                    got = hash_range(hasher, fd, offset, count, scratch)
                except OSError as exc:  # the frame went out whole
                    raise unreadable(exc) from None
        else:
            chunk = frame_bytes if fd is not None else min(READ_CHUNK_BYTES, frame_bytes)
            count = min(chunk, size - offset)
            try:
                data = source.read(offset, count)
            except (OSError, FtransferError) as exc:  # before the frame: at a boundary
                raise unreadable(exc) from None
            got = len(data)
            header = conn.start_data(count)  # (what conn.send(FileData) does, less a copy)
            yield WriteFrame(data=header, body=data.ljust(count, b"\0"))
            if hasher is not None:
                hasher.update(data)
        if got != count:
            raise FileChanged("the file changed size while it was being sent")
        offset += count
        if progress is not None:
            progress(count)
    return known if hasher is None else hasher.digest()


def new_scratch() -> bytearray:
    """A hashing buffer (see HASH_SCRATCH_BYTES)."""
    return bytearray(HASH_SCRATCH_BYTES)
