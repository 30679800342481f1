"""``S3Store``: the Store port over a bucket of an S3-compatible object store.

Theory of operation
-------------------
*A tree on a flat keyspace.* A name ``a/b/c`` is the key ``PREFIX + "a/b/c"``. A
directory is a prefix: it exists if its marker (``a/b/``, an empty object, what
``mkdir`` makes and what the S3 consoles make) or any key below it does, so a
tree uploaded by another tool is served too. A listing is one ``ListObjectsV2``
with ``Delimiter="/"`` per thousand entries (common prefixes are directories),
plus one HEAD per file for the mtime and mode that travel as metadata (a
listing does not return metadata), run in parallel in the store's threads.
Hidden keys (temporaries, partials, upload records: config.RESERVED_PREFIXES)
and keys no request could name (names.is_valid_component) are left out.

*Semantics* (docs/architecture.md has the table):

- an upload appears whole at its key or not at all (s3_objects.py), including
  under concurrent writers on different nodes: the last complete wins, each
  version whole; ``exclusive`` is ``If-None-Match: *`` on the commit, atomic;
- ``remove`` of a file is one DELETE; of a directory, its marker once nothing but
  hidden records of dead uploads is below it (checked, then deleted: a file that
  another node commits meanwhile makes the directory reappear, implicitly);
- ``move`` of a file is a server-side copy then a delete, not atomic: a reader
  may see both names for a moment, never neither, never a partial object; a
  directory move copies every key below it, one by one, and is refused above
  MOVE_MAX_KEYS keys; ``exclusive`` is checked before the copy (a race with
  another writer of the target is not excluded);
- there are no symlinks, FIFOs or devices on a bucket.

*Resume* (s3_objects.py): a resumable upload's record is the partial, named
``.ftransfer-part-<binding key>`` beside the target as on disk, so it is found by
any node; its parts are the data. ``partial`` and a resumed ``open_write`` check
the record against the request (user and name, size, mtime, transfer id, the
first chunk's digest, the TTL) and the parts against ListParts (ETag and size):
nothing is re-read.

*Sweep.* ``sweep_temporaries`` lists the bucket's multipart uploads and aborts
those whose writer is gone: no record and older than UPLOAD_GRACE_S (a node died
between starting the upload and writing its record), a record not rewritten for
UPLOAD_GRACE_S (a writer rewrites it after every part) unless it is a resumable
partial younger than the TTL. Every node runs it at start.

Every call may block on the network: the services call the store from worker
threads, except ``write`` and ``read``, which only queue work for the store's
own threads (s3_objects.py) and wait only when the network is behind.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._records import evolve
from ..checksum import CHUNK_BYTES, ZERO_DIGEST, TreeHasher, key_hex, prefix_digest
from ..config import PARTIAL_TTL_S, RESERVED_PREFIXES, TEMP_PREFIX
from ..errors import (
    DirectoryNotEmpty,
    Exists,
    InvalidMove,
    IsADirectory,
    NotADirectory,
    NotFound,
    PathRefused,
    Refused,
    ResumeRefused,
    StorageIOError,
)
from .base import Probe, Resume, refuse_directory_name
from .entry import Entry, EntryKind
from .names import Name, is_valid_component
from .partial import binding_bytes, partial_leaf
from .s3_client import MAX_KEY_BYTES, S3Location, connect, error_code, mapped
from .s3_objects import S3Readable, S3Writer, Target, UploadRecord, new_record_key

THREADS = 16
"""Worker threads (and pooled connections) per store: part uploads, read-ahead
and listing HEADs of every transfer share them."""
UPLOAD_GRACE_S = 3600.0
"""A multipart upload whose record has not been rewritten for this long has no
live writer (a writer rewrites it after every part)."""
LIVE_S = 60.0
"""An upload record rewritten this recently belongs to a live writer (rmdir waits
for it, as for a temporary on disk)."""
MOVE_MAX_KEYS = 10_000
"""A directory move copies its keys one by one: above this many it is refused."""
_PAGE = 1000
_Parts = list[tuple[str, list[bytes]]]
"""Each stored part's ETag and chunk digests."""


class S3Store:
    """A bucket (below a key prefix) as a tree of directories and files."""

    remote = True
    """Every call crosses the network (server/operations.py: opened off the loop)."""

    def __init__(
        self,
        location: S3Location,
        *,
        partial_ttl_s: float = PARTIAL_TTL_S,
        client: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.location = location
        self.root = location.url
        self.partial_ttl_s = partial_ttl_s
        self.client = client if client is not None else connect(location, pool=THREADS + 4)
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="ftransfer-s3")
        self._clock = clock
        self._owner = True

    def check(self) -> None:
        """Reach the bucket once (at start): a wrong endpoint, credentials or
        bucket fail here, with the reason, rather than at the first request."""
        with mapped(self.location.url, self.location):
            try:
                self.client.head_bucket(Bucket=self.location.bucket)
            except Exception as exc:
                if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                    raise NotFound(
                        f"the object store has no bucket {self.location.bucket!r}"
                    ) from None
                raise

    def scoped(self, name: Name) -> S3Store:
        """See ``Store.scoped``: the same client and threads, a longer prefix."""
        self.mkdir(name, parents=True)
        view = object.__new__(S3Store)
        view.location = evolve(self.location, prefix=self._dir_key(name))
        view.root = view.location.url
        view.partial_ttl_s, view.client, view.pool = self.partial_ttl_s, self.client, self.pool
        view._clock, view._owner = self._clock, False
        return view

    def close(self) -> None:
        if self._owner:  # (a request retrying a store that is gone is not waited for)
            self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- keys --------------------------------------------------------------------------

    def _key(self, name: Name) -> str:
        key = self.location.prefix + name.text
        if len(key.encode("utf-8", "surrogateescape")) >= MAX_KEY_BYTES:
            raise PathRefused(f"{name}: longer than the object store allows")
        return key

    def _dir_key(self, name: Name) -> str:
        return self._key(name) + "/" if name.parts else self.location.prefix

    def _call(self, what: object, operation: str, **arguments: Any) -> Any:
        with mapped(str(what), self.location):
            return getattr(self.client, operation)(Bucket=self.location.bucket, **arguments)

    def _head(self, name: Name) -> dict[str, Any] | None:
        try:
            return dict(self._call(name, "head_object", Key=self._key(name)))
        except NotFound:
            return None

    def _has_below(self, prefix: str) -> bool:
        answer = self._call(prefix, "list_objects_v2", Prefix=prefix, MaxKeys=1)
        return bool(answer.get("KeyCount", 0))

    def _is_dir(self, name: Name) -> bool:
        return not name.parts or self._has_below(self._dir_key(name))

    def _require_dir(self, name: Name) -> None:
        """``name`` is a directory, or the reason it is not."""
        if self._is_dir(name):
            return
        for depth in range(1, len(name.parts)):
            if self._head(Name(parts=name.parts[:depth])) is not None:
                raise NotADirectory(f"{name}: a component is not a directory")
        if self._head(name) is not None:
            raise NotADirectory(f"{name}: not a directory")
        raise NotFound(f"{name}: no such directory")

    # ---- reading -----------------------------------------------------------------------

    def open_read(self, name: Name) -> S3Readable:
        if name.directory:
            refuse_directory_name(self, name)
        if not name.parts:
            raise IsADirectory(f"{name}: is a directory")
        head = self._head(name)
        if head is None:
            if self._is_dir(name):
                raise IsADirectory(f"{name}: is a directory")
            self._require_dir(name.parent)
            raise NotFound(f"{name}: no such file or directory")
        return S3Readable(self.client, self.location, self._key(name), head, self.pool)

    def stat(self, name: Name) -> Entry:
        if not name.parts:
            return Entry(name="", kind=EntryKind.DIRECTORY, size=0, mtime_ns=0)
        head = self._head(name)
        if head is not None:
            if name.directory:
                raise NotADirectory(f"{name}: not a directory")
            return self._file_entry(name.text, head)
        if self._is_dir(name):
            return Entry(name=name.text, kind=EntryKind.DIRECTORY, size=0, mtime_ns=0)
        self._require_dir(name.parent)
        raise NotFound(f"{name}: no such file or directory")

    def _file_entry(self, leaf: str, head: dict[str, Any]) -> Entry:
        readable = S3Readable(self.client, self.location, "", head, self.pool)
        return Entry(
            name=leaf,
            kind=EntryKind.FILE,
            size=readable.size,
            mtime_ns=readable.mtime_ns,
            mode=readable.mode,
        )

    def digest(self, name: Name) -> bytes:
        readable = self.open_read(name)
        try:
            if readable.digest is not None:
                return readable.digest
            hasher = TreeHasher()
            for offset in range(0, readable.size, CHUNK_BYTES):
                hasher.update(readable.read(offset, CHUNK_BYTES))
            return hasher.digest()
        finally:
            readable.close()

    def list(self, name: Name) -> Iterator[Entry]:
        self._require_dir(name)
        prefix = self._dir_key(name)
        for page in self._pages(prefix, delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                leaf = str(common["Prefix"])[len(prefix) :].rstrip("/")
                if is_valid_component(leaf):
                    yield Entry(name=leaf, kind=EntryKind.DIRECTORY, size=0, mtime_ns=0)
            leaves = [
                leaf
                for item in page.get("Contents", [])
                if is_valid_component(leaf := str(item["Key"])[len(prefix) :])
            ]
            yield from self.pool.map(lambda leaf: self._listed(name, leaf), leaves)

    def _listed(self, directory: Name, leaf: str) -> Entry:
        child = Name(parts=(*directory.parts, leaf))
        head = self._head(child)
        if head is None:  # (removed since the listing: shown as it was listed)
            return Entry(name=leaf, kind=EntryKind.FILE, size=0, mtime_ns=0)
        return self._file_entry(leaf, head)

    def _pages(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        token: dict[str, str] = {}
        while True:
            extra = {"Delimiter": delimiter} if delimiter else {}
            page = self._call(
                prefix, "list_objects_v2", Prefix=prefix, MaxKeys=_PAGE, **extra, **token
            )
            yield page
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": str(page["NextContinuationToken"])}

    # ---- writing -----------------------------------------------------------------------

    def open_write(
        self,
        name: Name,
        *,
        size: int | None,
        mtime_ns: int,
        mode: int | None,
        exclusive: bool,
        limit: int,
        resume: Resume | None = None,
    ) -> S3Writer:
        if not name.parts:
            raise IsADirectory(f"{name}: is a directory")
        if name.directory:
            refuse_directory_name(self, name)
        resumable = resume is not None and size is not None and size > CHUNK_BYTES
        if resume is not None and resume.offset and not resumable:
            raise ResumeRefused(f"{name}: a file of one chunk is not resumed")
        self._require_dir(name.parent)
        self._check_target(name, exclusive)
        dir_prefix = self._dir_key(name.parent)
        if not resumable or resume is None or size is None:
            target = self._target(name, new_record_key(dir_prefix, TEMP_PREFIX))
            return S3Writer(
                target, size=size, mtime_ns=mtime_ns, mode=_mode(mode), exclusive=exclusive,
                limit=limit,
            )  # fmt: skip
        target = self._target(name, dir_prefix + partial_leaf(resume.binding))
        record = self._resumed(target, resume, size, mtime_ns) if resume.offset else None
        ordinary_key = new_record_key(dir_prefix, TEMP_PREFIX)
        claim = None
        if record is None:
            replaced = self._replace_old(target, resume)
            if replaced is False:
                # (another transfer is writing this name right now: an ordinary
                # upload, as on disk when its partial is locked)
                ordinary = self._target(name, ordinary_key)
                return S3Writer(
                    ordinary, size=size, mtime_ns=mtime_ns, mode=_mode(mode),
                    exclusive=exclusive, limit=limit,
                )  # fmt: skip
            claim = replaced if isinstance(replaced, str) else None
        return S3Writer(
            target, size=size, mtime_ns=mtime_ns, mode=_mode(mode), exclusive=exclusive,
            limit=limit, record=record, binding=(_binding_key(resume), resume.transfer_id),
            claim=claim, ordinary_key=ordinary_key,
        )  # fmt: skip

    def _target(self, name: Name, record_key: str) -> Target:
        return Target(self.client, self.location, self._key(name), record_key, self.pool)

    def _check_target(self, name: Name, exclusive: bool) -> None:
        if self._has_below(self._dir_key(name)):
            raise IsADirectory(f"{name}: is a directory")
        if exclusive and self._head(name) is not None:
            raise Exists(f"{name}: exists")

    def _resumed(self, target: Target, resume: Resume, size: int, mtime_ns: int) -> UploadRecord:
        """The record of the partial this request resumes, cut to its offset and
        claimed by the new writer; or ResumeRefused."""
        record, parts = self._usable(target, resume, size, mtime_ns)
        stored = resume.offset // record.part_bytes if record is not None else 0
        if record is None or resume.offset % record.part_bytes or stored > len(parts):
            raise ResumeRefused(f"{target.label}: no partial to resume from {resume.offset}")
        record.set_parts(parts[:stored])
        target.save_record(record)  # (If-Match: a writer resuming it elsewhere stops)
        return record

    def _usable(
        self, target: Target, resume: Resume, size: int, mtime_ns: int
    ) -> tuple[UploadRecord | None, _Parts]:
        """The partial's record and the parts of it a resume may build on."""
        record = self._read_record(target)
        if record is None or not record.matches(
            _binding_key(resume), resume.transfer_id, size, mtime_ns
        ):
            return None, []
        parts = record.parts()
        if not parts or parts[0][1][:1] != [resume.first_digest]:
            return None, []
        try:
            listed = self._listed_parts(target, record)
        except NotFound:
            return None, []
        kept: _Parts = []
        for number, (etag, chunks) in enumerate(parts, start=1):
            if listed.get(number) != (etag, record.part_bytes):
                break
            kept.append((etag, chunks))
        return record, kept

    def _read_record(self, target: Target) -> UploadRecord | None:
        try:
            answer = self._call(target.label, "get_object", Key=target.record_key)
        except NotFound:
            return None
        age = self._clock() - answer["LastModified"].timestamp()
        if age > self.partial_ttl_s:
            return None
        return UploadRecord.parse(answer["Body"].read(), str(answer["ETag"]))

    def _listed_parts(self, target: Target, record: UploadRecord) -> dict[int, tuple[str, int]]:
        found: dict[int, tuple[str, int]] = {}
        marker: dict[str, int] = {}
        while True:
            try:
                page = self.client.list_parts(
                    Bucket=self.location.bucket,
                    Key=target.key,
                    UploadId=record.upload_id,
                    **marker,
                )
            except Exception as exc:
                if error_code(exc) == "NoSuchUpload":
                    raise NotFound(f"{target.label}: the upload is gone") from None
                with mapped(target.label, self.location):
                    raise
            for part in page.get("Parts", []):
                found[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not page.get("IsTruncated"):
                return found
            marker = {"PartNumberMarker": int(page["NextPartNumberMarker"])}

    def _replace_old(self, target: Target, resume: Resume) -> str | bool:
        """A fresh resumable upload takes the name's partial: an older one is
        dropped (returns its record's ETag, which the new writer replaces; True:
        there was none), unless another transfer wrote it within LIVE_S (False;
        the same transfer, run again, takes its own over)."""
        try:
            answer = self._call(target.label, "get_object", Key=target.record_key)
        except NotFound:
            return True
        old = UploadRecord.parse(answer["Body"].read(), str(answer["ETag"]))
        age = self._clock() - answer["LastModified"].timestamp()
        mine = old is not None and old.fields.get("transfer") == key_hex(resume.transfer_id)
        if age < LIVE_S and not mine:
            return False
        if old is not None:
            with contextlib.suppress(NotFound, StorageIOError):
                self._call(
                    target.label, "abort_multipart_upload", Key=target.key,
                    UploadId=old.upload_id,
                )  # fmt: skip
        return str(answer["ETag"])

    def partial(self, name: Name, *, size: int, mtime_ns: int, resume: Resume) -> Probe:
        if not name.parts or size <= CHUNK_BYTES:
            return Probe(offset=0, prefix=ZERO_DIGEST)
        target = self._target(name, self._dir_key(name.parent) + partial_leaf(resume.binding))
        record, parts = self._usable(target, resume, size, mtime_ns)
        if record is None:
            return Probe(offset=0, prefix=ZERO_DIGEST)
        chunks = [c for _etag, part_chunks in parts for c in part_chunks]
        return Probe(offset=len(parts) * record.part_bytes, prefix=prefix_digest(chunks))

    # ---- the namespace -----------------------------------------------------------------

    def remove(self, name: Name) -> None:
        if not name.parts:
            raise DirectoryNotEmpty("/: the root is not removed")
        head = self._head(name)
        if head is not None:
            if name.directory:
                raise NotADirectory(f"{name}: not a directory")
            self._call(name, "delete_object", Key=self._key(name))
            return
        self._require_dir(name)
        prefix = self._dir_key(name)
        records = []
        for page in self._pages(prefix):
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if key == prefix:
                    continue
                if not self._dead_record(key[len(prefix) :], item):
                    raise DirectoryNotEmpty(f"{name}: directory not empty")
                records.append(key)
        for key in records:
            self._drop_record(key)
        self._call(name, "delete_object", Key=prefix)

    def _dead_record(self, leaf: str, item: dict[str, Any]) -> bool:
        """A hidden upload record whose writer has not written for LIVE_S (as rmdir
        on disk drops the partials nobody holds): it goes with its directory."""
        if "/" in leaf or not leaf.startswith(RESERVED_PREFIXES):
            return False
        return bool(self._clock() - item["LastModified"].timestamp() > LIVE_S)

    def _drop_record(self, key: str) -> None:
        """Abort a record's multipart upload and delete the record."""
        answer = self._call(key, "get_object", Key=key)
        record = UploadRecord.parse(answer["Body"].read(), str(answer["ETag"]))
        if record is not None:
            with contextlib.suppress(NotFound, StorageIOError):
                self._call(
                    key, "abort_multipart_upload", Key=record.fields.get("key", ""),
                    UploadId=record.upload_id,
                )  # fmt: skip
        self._call(key, "delete_object", Key=key)

    def mkdir(self, name: Name, *, parents: bool) -> None:
        if not name.parts:
            if parents:
                return
            raise Exists("/: exists")
        for depth in range(1, len(name.parts) + 1):
            part = Name(parts=name.parts[:depth])
            last = depth == len(name.parts)
            if self._head(part) is not None:
                raise (Exists if last else NotADirectory)(f"{name}: not a directory")
            if self._is_dir(part):
                if last and not parents:
                    raise Exists(f"{name}: exists")
                continue
            if not (parents or last):
                raise NotFound(f"{name}: no such directory")
            self._call(name, "put_object", Key=self._dir_key(part), Body=b"")

    def move(self, source: Name, target: Name, *, exclusive: bool) -> Name:
        if not source.parts:
            raise InvalidMove("/: the root cannot be moved")
        head = self._head(source)
        if head is None:
            self._require_dir(source)
        elif source.directory:
            raise NotADirectory(f"{source}: not a directory")
        final = self._move_target(source, target)
        if head is None and final.is_within(source):
            raise InvalidMove(f"{source}: cannot move a directory into itself")
        if final.parts == source.parts:
            return final
        self._require_dir(final.parent)
        existing = self._head(final)
        if existing is not None and (exclusive or head is None):
            raise (Exists if exclusive else NotADirectory)(
                f"{final}: exists" if exclusive else f"{final}: a directory cannot replace a file"
            )
        if existing is None and self._is_dir(final):
            raise IsADirectory(f"{final}: is a directory, not replaced")
        if head is not None:
            self._copy(self._key(source), self._key(final), source)
            self._call(source, "delete_object", Key=self._key(source))
        else:
            self._move_tree(source, final)
        return final

    def _move_target(self, source: Name, target: Name) -> Name:
        if target.parts and self._head(target) is None and self._is_dir(target):
            return Name(parts=(*target.parts, source.leaf))
        if not target.parts:
            return Name(parts=(source.leaf,))
        if target.directory:
            raise NotADirectory(
                f"{target}: not a directory"
                if self._head(target) is not None
                else f"{target}: no such directory"
            )
        return target

    def _copy(self, source_key: str, target_key: str, what: Name) -> None:
        """A server-side copy with the metadata (multipart above 5 GiB: boto3's
        managed copy)."""
        with mapped(str(what), self.location):
            self.client.copy(
                {"Bucket": self.location.bucket, "Key": source_key},
                self.location.bucket,
                target_key,
            )

    def _move_tree(self, source: Name, final: Name) -> None:
        old, new = self._dir_key(source), self._dir_key(final)
        keys = [str(item["Key"]) for page in self._pages(old) for item in page.get("Contents", [])]
        if len(keys) > MOVE_MAX_KEYS:
            raise Refused(f"{source}: more than {MOVE_MAX_KEYS} objects: not moved")
        if not keys:
            keys = [old]
        for key in keys:
            self._copy(key, new + key[len(old) :], source)
        if new not in {new + key[len(old) :] for key in keys}:
            self._call(final, "put_object", Key=new, Body=b"")
        for key in keys:
            self._call(source, "delete_object", Key=key)

    # ---- the sweep ---------------------------------------------------------------------

    def sweep_temporaries(self) -> int:
        """Abort the multipart uploads whose writers are gone (see the module
        docstring); returns how many."""
        records: dict[str, dict[str, tuple[str, float]]] = {}
        aborted = 0
        for upload in self._uploads():
            key, upload_id = str(upload["Key"]), str(upload["UploadId"])
            directory = key[: key.rfind("/") + 1]
            if directory not in records:
                records[directory] = self._records_in(directory)
            found = records[directory].get(upload_id)
            started = upload["Initiated"].timestamp()
            if self._alive(found, started):
                continue
            with mapped(key, self.location):
                self.client.abort_multipart_upload(
                    Bucket=self.location.bucket, Key=key, UploadId=upload_id
                )
                if found is not None:
                    self.client.delete_object(Bucket=self.location.bucket, Key=found[0])
            aborted += 1
        return aborted

    def _alive(self, record: tuple[str, float] | None, started: float) -> bool:
        now = self._clock()
        if record is None:
            return now - started < UPLOAD_GRACE_S
        record_key, touched = record
        if record_key.rsplit("/", 1)[-1].startswith(RESERVED_PREFIXES[1]):
            return now - touched < max(self.partial_ttl_s, UPLOAD_GRACE_S)
        return now - touched < UPLOAD_GRACE_S

    def _uploads(self) -> Iterator[dict[str, Any]]:
        markers: dict[str, str] = {}
        while True:
            page = self._call(
                "uploads", "list_multipart_uploads", Prefix=self.location.prefix, **markers
            )
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            markers = {
                "KeyMarker": str(page["NextKeyMarker"]),
                "UploadIdMarker": str(page["NextUploadIdMarker"]),
            }

    def _records_in(self, directory: str) -> dict[str, tuple[str, float]]:
        """Upload id -> (record key, last written) for the records of a directory."""
        found: dict[str, tuple[str, float]] = {}
        for reserved in RESERVED_PREFIXES:
            for page in self._pages(directory + reserved, delimiter="/"):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    answer = self._call(key, "get_object", Key=key)
                    record = UploadRecord.parse(answer["Body"].read(), str(answer["ETag"]))
                    if record is not None:
                        found[record.upload_id] = (key, item["LastModified"].timestamp())
        return found


def _mode(mode: int | None) -> int:
    return 0o644 if mode is None else mode & 0o777


def _binding_key(resume: Resume) -> str:
    return key_hex(binding_bytes(resume.binding))
