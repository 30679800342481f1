"""Objects on an S3-compatible store: reading one, and writing one whole or not at all.

Theory of operation
-------------------
*Reading.* ``S3Readable`` is pinned to the object's ETag when it was opened: every
ranged GET carries ``If-Match``, so a reader sees the version it opened or fails
with a clear error (never a mix of two versions). The server's services read a
file sequentially in frames from the event loop, so the readable reads ahead:
it keeps up to READ_AHEAD blocks of CHUNK_BYTES in flight in the store's worker
threads, and a read only waits when the network is behind the sender. Memory is
READ_AHEAD blocks per download, whatever the file's size.

*Writing.* ``S3Writer`` hashes what passes through ``write`` (the tree digest,
checksum.py) and cuts it into parts of ``part_bytes``, a multiple of CHUNK_BYTES
chosen so that a file of any declared size needs at most MAX_PARTS parts (S3's
limit; every part but the last is at least 5 MiB). A file of at most one part is
sent by a single PUT at commit, with its metadata; a larger one is a multipart
upload whose parts go up in the worker threads, at most PARTS_IN_FLIGHT at once
(``write`` waits for a slot: memory stays flat in the file's size). ``commit``
sends the last part, waits for all of them, checks the size and the end-to-end
digest, and only then completes the upload, so the object appears whole at its
key or not at all (``If-None-Match: *`` makes an exclusive commit fail
atomically). The digest cannot be in the metadata set when the upload starts, so
it is added right after by a copy of the object onto itself that only replaces
metadata (pinned to the new ETag; a store makes that a metadata update).

*The upload record* (``UploadRecord``) is a small hidden object beside the
target, named like a local temporary or partial (config.RESERVED_PREFIXES), that
says which multipart upload belongs to which name and, for a resumable upload,
what binds it (user and name, size, mtime, a hash of the transfer id) and the
chunk digests and ETag of every part stored, in order. It is rewritten after each
part is stored (the part first, then its record entry: the journal rule of
partial.py), with ``If-Match`` on the record's previous ETag. That makes it a
lease: a writer that resumes the upload through another node rewrites the record,
and the older writer's next rewrite fails, so it stops (one writer per partial,
across nodes, without a lock server). The record's last-modified time is the
writer's heartbeat, which ``sweep`` uses to tell a live upload from a dead one.

*Resuming* needs no byte read again: the parts the store lists (ListParts) whose
ETags match the record are the resume state, and the record's chunk digests
continue the tree digest. A resume lands on any node, since all of it is in the
bucket.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import json
import os
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any

from ..checksum import CHUNK_BYTES, TreeHasher, hex_digest, key_hex
from ..errors import (
    Aborted,
    Exists,
    FtransferError,
    IntegrityError,
    StorageIOError,
    TooLarge,
)
from .s3_client import S3Location, error_code, mapped, translate

READ_AHEAD = 4
"""Blocks (of CHUNK_BYTES) a download keeps in flight."""
PARTS_IN_FLIGHT = 4
"""Parts an upload sends at once."""
MAX_PARTS = 10_000
"""S3's most parts in one multipart upload."""
RECORD_VERSION = 1


def part_bytes_for(size: int | None) -> int:
    """The part size for an upload of ``size`` bytes (None: unknown): whole chunks,
    as few per part as keep the parts within MAX_PARTS."""
    if size is None:
        return CHUNK_BYTES
    chunks = -(-size // CHUNK_BYTES)
    return CHUNK_BYTES * max(1, -(-chunks // MAX_PARTS))


def metadata(mtime_ns: int, mode: int, digest: bytes | None = None) -> dict[str, str]:
    """What travels with an object: its mtime, mode and (once known) digest."""
    meta = {"mtime-ns": str(mtime_ns), "mode": f"{mode:o}"}
    if digest is not None:
        meta["digest"] = hex_digest(digest)
    return meta


# ---- reading ---------------------------------------------------------------------------


class S3Readable:
    """One version of an object (pinned by ETag), read ahead in blocks."""

    def __init__(
        self, client: Any, location: S3Location, key: str, head: dict[str, Any], pool: Executor
    ) -> None:
        self._client, self._location, self._key, self._pool = client, location, key, pool
        self.etag = str(head["ETag"])
        self.size = int(head["ContentLength"])
        meta = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
        self.mtime_ns = _int(meta.get("mtime-ns"), int(head["LastModified"].timestamp() * 1e9))
        self.mode = _int(meta.get("mode"), 0o644, base=8) & 0o777
        self.digest: bytes | None = _digest(meta.get("digest"))
        self._blocks: dict[int, Future[bytes]] = {}
        self._label = key[len(location.prefix) :]

    def read(self, offset: int, n: int) -> bytes:
        end = min(offset + n, self.size)
        pieces: list[bytes] = []
        while offset < end:
            index = offset // CHUNK_BYTES
            block = self._block(index)
            start = offset - index * CHUNK_BYTES
            piece = block[start : start + end - offset]
            if not piece:
                break  # (the object is shorter than it said: the caller sees it)
            pieces.append(piece)
            offset += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _block(self, index: int) -> bytes:
        last = (self.size - 1) // CHUNK_BYTES
        for stale in [i for i in self._blocks if i < index]:
            self._blocks.pop(stale).cancel()
        for ahead in range(index, min(index + READ_AHEAD, last + 1)):
            if ahead not in self._blocks:
                self._blocks[ahead] = self._pool.submit(self._get, ahead)
        future = self._blocks.get(index)
        return future.result() if future is not None else b""

    def _get(self, index: int) -> bytes:
        first = index * CHUNK_BYTES
        last = min(first + CHUNK_BYTES, self.size) - 1
        try:
            answer = self._client.get_object(
                Bucket=self._location.bucket,
                Key=self._key,
                Range=f"bytes={first}-{last}",
                IfMatch=self.etag,
            )
            return bytes(answer["Body"].read())
        except Exception as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):
                raise StorageIOError(f"{self._label}: replaced while it was being read") from None
            raise translate(exc, self._label, self._location) from None

    def remember_digest(self, digest: bytes) -> None:
        """Kept only by a commit (the metadata): a reader does not write."""

    def chunk_digests(self, count: int) -> list[bytes]:
        hasher = TreeHasher()
        for index in range(count):
            hasher.update(self._block(index))
        return hasher.chunks[:count]

    def remember_chunks(self, chunks: list[bytes]) -> None:
        """Nothing to keep them in (a resumed download re-hashes its prefix)."""

    def close(self) -> None:
        for future in self._blocks.values():
            future.cancel()
        self._blocks.clear()


def _int(text: str | None, default: int, base: int = 10) -> int:
    try:
        return int(text, base) if text is not None else default
    except ValueError:
        return default


def _digest(text: str | None) -> bytes | None:
    try:
        value = bytes.fromhex(text) if text else None
    except ValueError:
        return None
    return value if value is not None and len(value) == 16 else None


# ---- the upload record -----------------------------------------------------------------


class UploadRecord:
    """The hidden object that says whose a multipart upload is and what it holds."""

    def __init__(self, fields: dict[str, Any], etag: str | None = None) -> None:
        self.fields, self.etag = fields, etag

    @classmethod
    def fresh(
        cls, upload_id: str, key: str, *, part_bytes: int, size: int | None, mtime_ns: int
    ) -> UploadRecord:
        return cls(
            {
                "v": RECORD_VERSION,
                "upload": upload_id,
                "key": key,
                "part_bytes": part_bytes,
                "size": size,
                "mtime_ns": mtime_ns,
                "binding": None,
                "transfer": None,
                "parts": [],
            }
        )

    @classmethod
    def parse(cls, data: bytes, etag: str) -> UploadRecord | None:
        try:
            fields = json.loads(data)
        except ValueError:
            return None
        if not isinstance(fields, dict) or fields.get("v") != RECORD_VERSION:
            return None
        return cls(fields, etag)

    @property
    def upload_id(self) -> str:
        return str(self.fields["upload"])

    @property
    def part_bytes(self) -> int:
        return int(self.fields["part_bytes"])

    def bind(self, binding: str, transfer_id: bytes) -> None:
        self.fields["binding"], self.fields["transfer"] = binding, key_hex(transfer_id)

    def matches(self, binding: str, transfer_id: bytes, size: int, mtime_ns: int) -> bool:
        fields = self.fields
        return (
            fields.get("binding") == binding
            and fields.get("transfer") == key_hex(transfer_id)
            and fields.get("size") == size
            and fields.get("mtime_ns") == mtime_ns
            and self.part_bytes == part_bytes_for(size)
        )

    def parts(self) -> list[tuple[str, list[bytes]]]:
        """Each stored part's ETag and chunk digests, in order."""
        return [
            (str(etag), [bytes.fromhex(c) for c in chunks]) for etag, chunks in self.fields["parts"]
        ]

    def set_parts(self, parts: list[tuple[str, list[bytes]]]) -> None:
        self.fields["parts"] = [[etag, [c.hex() for c in chunks]] for etag, chunks in parts]

    def encode(self) -> bytes:
        return json.dumps(self.fields, separators=(",", ":")).encode()


# ---- writing ---------------------------------------------------------------------------


class Target:
    """Where a writer commits, and how it reaches the store."""

    def __init__(
        self, client: Any, location: S3Location, key: str, record_key: str, pool: Executor
    ) -> None:
        self.client, self.location, self.key, self.record_key, self.pool = (
            client,
            location,
            key,
            record_key,
            pool,
        )
        self.label = key[len(location.prefix) :]

    def call(self, operation: str, **arguments: Any) -> Any:
        with mapped(self.label, self.location):
            return getattr(self.client, operation)(Bucket=self.location.bucket, **arguments)

    def save_record(self, record: UploadRecord, *, claim: bool = False) -> None:
        """Write the record, only over the version this writer last saw (none:
        only where there is none; ``claim``: over whatever is there)."""
        if claim:
            condition = {}
        elif record.etag is None:
            condition = {"IfNoneMatch": "*"}
        else:
            condition = {"IfMatch": record.etag}
        try:
            answer = self.client.put_object(
                Bucket=self.location.bucket, Key=self.record_key, Body=record.encode(), **condition
            )
        except Exception as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):
                raise Aborted(f"{self.label}: another transfer took this upload over") from None
            raise translate(exc, self.label, self.location) from None
        record.etag = str(answer["ETag"])

    def drop(self, upload_id: str | None) -> None:
        """Abort the multipart upload and delete the record (errors are ignored:
        the sweep removes what is left)."""
        try:
            if upload_id is not None:
                self.client.abort_multipart_upload(
                    Bucket=self.location.bucket, Key=self.key, UploadId=upload_id
                )
            self.client.delete_object(Bucket=self.location.bucket, Key=self.record_key)
        except Exception:
            return


class S3Writer:
    """An upload that appears at its key only when ``commit`` completes it."""

    def __init__(
        self,
        target: Target,
        *,
        size: int | None,
        mtime_ns: int,
        mode: int,
        exclusive: bool,
        limit: int,
        record: UploadRecord | None = None,
        binding: tuple[str, bytes] | None = None,
        claim: str | None = None,
        ordinary_key: str = "",
    ) -> None:
        """``record``: a resumed upload (its parts are this writer's start);
        ``binding``: the upload is resumable, bound to this (binding key, transfer
        id), and kept for a resume if this writer is interrupted; ``claim``: the
        ETag of the partial's record it replaces (None: there is none), else it
        writes as an ordinary upload, under ``ordinary_key``."""
        self._target, self._size, self._exclusive = target, size, exclusive
        self._bound = size if size is not None else min(limit, MAX_PARTS * CHUNK_BYTES)
        self._mtime_ns = time.time_ns() if mtime_ns == -1 else mtime_ns
        self._mode, self._binding = mode, binding
        self._resumable = binding is not None
        self._claim, self._ordinary_key = claim, ordinary_key
        self._record = record
        self._part_bytes = record.part_bytes if record else part_bytes_for(size)
        stored = record.parts() if record else []
        self._stored: list[tuple[str, list[bytes]]] = stored
        self._hasher = TreeHasher(chunks=[c for _etag, chunks in stored for c in chunks])
        self._next_part = len(stored) + 1
        self._done_parts: dict[int, tuple[str, list[bytes]]] = {}
        self._pending: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(PARTS_IN_FLIGHT)
        self._record_lock = threading.Lock()
        self._buffer = bytearray()
        self._written = len(stored) * self._part_bytes
        self.resumed_from = self._written
        self._lock = _thread.allocate_lock()
        self._done = False
        self._failure: FtransferError | None = None
        self.committed = False
        self.ended: Future[None] | None = None
        """An abort's clean-up in the store's threads (tests wait for it)."""

    @property
    def written(self) -> int:
        return self._written

    @property
    def digest(self) -> bytes:
        return self._hasher.digest()

    @property
    def chunks(self) -> list[bytes]:
        return self._hasher.chunks

    # ---- write -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._check_open()
            if self._written + len(data) > self._bound:
                self._end(keep=False)
                if self._size is None:
                    raise TooLarge(f"{self._target.label}: more than the limit of {self._bound}")
                raise IntegrityError(
                    f"{self._target.label}: more bytes than the declared {self._size}"
                )
            self._hasher.update(data)
            self._written += len(data)
            view = memoryview(data)
            while view:
                if len(self._buffer) == self._part_bytes:
                    self._send_part()  # (a full part goes once more bytes follow it:
                    # a file of one part is sent by one PUT at commit)
                room = self._part_bytes - len(self._buffer)
                self._buffer += view[:room]
                view = view[room:]

    def _send_part(self) -> None:
        """Hand the buffered part to a worker thread (waiting for a free slot)."""
        if self._failure is not None:
            raise self._failure
        if self._record is None:
            self._start_upload()
        number = self._next_part
        self._next_part += 1
        body, self._buffer = bytes(self._buffer), bytearray()
        first = (number - 1) * self._part_bytes // CHUNK_BYTES
        chunks = self._hasher.chunks[first : first + self._part_bytes // CHUNK_BYTES]
        self._slots.acquire()
        self._pending.append(self._target.pool.submit(self._upload_part, number, body, chunks))

    def _start_upload(self) -> None:
        answer = self._target.call(
            "create_multipart_upload",
            Key=self._target.key,
            Metadata=metadata(self._mtime_ns, self._mode),
        )
        record = UploadRecord.fresh(
            str(answer["UploadId"]),
            self._target.key,
            part_bytes=self._part_bytes,
            size=self._size,
            mtime_ns=self._mtime_ns,
        )
        self._record = record
        if self._binding is None:
            self._target.save_record(record, claim=True)
            return
        record.bind(*self._binding)
        record.etag = self._claim
        try:
            self._target.save_record(record)  # (only over the partial it replaces)
        except Aborted:  # another transfer took the name's partial first: write on
            # as an ordinary upload (as on disk when the partial is locked)
            self._binding, self._resumable = None, False
            record.fields["binding"] = record.fields["transfer"] = None
            self._target.record_key = self._ordinary_key
            self._target.save_record(record, claim=True)

    def _upload_part(self, number: int, body: bytes, chunks: list[bytes]) -> None:
        assert self._record is not None
        try:
            if self._failure is not None:
                return
            answer = self._target.call(
                "upload_part",
                Key=self._target.key,
                UploadId=self._record.upload_id,
                PartNumber=number,
                Body=body,
            )
            self._journal(number, str(answer["ETag"]), chunks)
        except FtransferError as exc:
            self._failure = self._failure or exc
        finally:
            self._slots.release()

    def _journal(self, number: int, etag: str, chunks: list[bytes]) -> None:
        """A part is stored: record it, with those before it (the record holds
        only an unbroken run of parts from the first)."""
        assert self._record is not None
        with self._record_lock:
            self._done_parts[number] = (etag, chunks)
            grew = False
            while len(self._stored) + 1 in self._done_parts:
                self._stored.append(self._done_parts.pop(len(self._stored) + 1))
                grew = True
            if grew:  # (also the heartbeat that tells the sweep this upload lives)
                self._record.set_parts(self._stored)
                self._target.save_record(self._record)

    # ---- commit ------------------------------------------------------------------------

    def commit(self, expected_digest: bytes) -> bytes:
        label = self._target.label
        with self._lock:
            try:
                self._check_open()
                digest = self._hasher.digest()
                if self._size is not None and self._written != self._size:
                    raise IntegrityError(f"{label}: got {self._written} of {self._size} bytes")
                if digest != expected_digest:
                    self._resumable = False  # (bytes that do not verify are not kept)
                    raise IntegrityError(f"{label}: digest mismatch, not committed")
                if self._record is None:
                    self._put_whole(digest)
                else:
                    self._complete(digest)
                self.committed = True
            except FtransferError:
                self._end(keep=self._resumable)
                raise
            self._done = True
        return digest

    def _conditions(self) -> dict[str, str]:
        return {"IfNoneMatch": "*"} if self._exclusive else {}

    def _put_whole(self, digest: bytes) -> None:
        try:
            self._target.client.put_object(
                Bucket=self._target.location.bucket,
                Key=self._target.key,
                Body=bytes(self._buffer),
                Metadata=metadata(self._mtime_ns, self._mode, digest),
                **self._conditions(),
            )
        except Exception as exc:
            raise self._commit_error(exc) from None

    def _complete(self, digest: bytes) -> None:
        assert self._record is not None
        if self._buffer or self._next_part == 1:
            self._send_part()
        for future in self._pending:
            try:
                future.result()
            except concurrent.futures.CancelledError:  # (the store is closing)
                raise StorageIOError(f"{self._target.label}: the server is stopping") from None
        if self._failure is not None:
            raise self._failure
        parts = [{"PartNumber": i + 1, "ETag": etag} for i, (etag, _c) in enumerate(self._stored)]
        try:
            answer = self._target.client.complete_multipart_upload(
                Bucket=self._target.location.bucket,
                Key=self._target.key,
                UploadId=self._record.upload_id,
                MultipartUpload={"Parts": parts},
                **self._conditions(),
            )
        except Exception as exc:
            raise self._commit_error(exc) from None
        self._target.drop(None)  # the record (the upload is complete)
        self._add_digest(str(answer["ETag"]), digest)

    def _commit_error(self, exc: Exception) -> FtransferError:
        if error_code(exc) in ("PreconditionFailed", "412"):
            self._resumable = False
            return Exists(f"{self._target.label}: exists")
        return translate(exc, self._target.label, self._target.location)

    def _add_digest(self, etag: str, digest: bytes) -> None:
        """Put the verified digest in the new object's metadata (a copy onto itself
        that only replaces metadata, pinned to its ETag: if another upload replaced
        it meanwhile, that one is left alone). Readers of an object without it hash
        what they read, so a failure here loses nothing."""
        target = self._target
        try:
            target.client.copy_object(
                Bucket=target.location.bucket,
                Key=target.key,
                CopySource={"Bucket": target.location.bucket, "Key": target.key},
                CopySourceIfMatch=etag,
                Metadata=metadata(self._mtime_ns, self._mode, digest),
                MetadataDirective="REPLACE",
            )
        except Exception:
            return

    # ---- abort -------------------------------------------------------------------------

    def abort(self) -> None:
        """Discard the upload (a resumable one is kept for a resume); the store is
        told in a worker thread, so an abort from the event loop never waits for it."""
        with self._lock:
            if not self._done:
                self._end(keep=self._resumable, wait=False)

    def _check_open(self) -> None:
        if self._done:
            raise StorageIOError(f"{self._target.label}: the upload has already ended")

    def _end(self, *, keep: bool, wait: bool = True) -> None:
        """End this writer: stop its parts and, unless ``keep``, abort the upload."""
        self._done = True
        self._failure = self._failure or Aborted(f"{self._target.label}: the upload ended")
        pending, record = list(self._pending), self._record

        def finish() -> None:
            # Parts not started yet are cancelled, not waited for: this runs in the
            # store's own threads, which those parts would need (many aborts at once
            # would otherwise wait for each other). A cancelled part never released
            # its slot; nothing takes one after the end.
            for future in pending:
                future.cancel()
            concurrent.futures.wait(pending)
            if record is not None and not keep:
                self._target.drop(record.upload_id)

        if wait:
            finish()
        else:
            self.ended = self._target.pool.submit(finish)


def new_record_key(directory_prefix: str, temp_prefix: str) -> str:
    """The record key of an upload that is not resumable (a temporary's name)."""
    return f"{directory_prefix}{temp_prefix}{os.urandom(8).hex()}"
