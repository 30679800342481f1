"""The S3 store on a real SeaweedFS: what travels with an object, whole or nothing,
resume through another node, the sweep, and a store that is wrong or goes away."""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any

import pytest
from seaweed import Seaweed

from ftransfer.checksum import CHUNK_BYTES, ZERO_DIGEST, TreeHasher, digest_bytes, prefix_digest
from ftransfer.errors import Aborted, NotFound, ResumeRefused, StorageIOError
from ftransfer.storage.base import Resume
from ftransfer.storage.names import Name, parse_name
from ftransfer.storage.s3 import UPLOAD_GRACE_S, S3Store
from ftransfer.storage.s3_client import S3Location
from ftransfer.storage.s3_objects import S3Writer

LIMIT = 1 << 40
BINDING = {"user": "alice", "name": "big.bin"}


def n(text: str) -> Name:
    return parse_name(text, allow_root=True)


def node(seaweed: Seaweed, bucket: str, **options: Any) -> S3Store:
    """Another S3Store on the same bucket and prefix: a second server."""
    name, _, prefix = bucket.partition("/")
    return S3Store(
        S3Location(bucket=name, prefix=prefix + "/", endpoint=seaweed.endpoint), **options
    )


@pytest.fixture
def data() -> bytes:
    return os.urandom(3 * CHUNK_BYTES + 12345)


def uploads(seaweed: Seaweed, bucket: str) -> list[str]:
    name, _, prefix = bucket.partition("/")
    answer = seaweed.client().list_multipart_uploads(Bucket=name, Prefix=prefix + "/")  # type: ignore[attr-defined]
    return [str(u["Key"]) for u in answer.get("Uploads", [])]


def tree_digest(data: bytes) -> bytes:
    hasher = TreeHasher()
    hasher.update(data)
    return hasher.digest()


def resume(data: bytes, *, offset: int = 0, transfer_id: bytes = b"t" * 16) -> Resume:
    first = digest_bytes(data[:CHUNK_BYTES])
    return Resume(binding=BINDING, transfer_id=transfer_id, first_digest=first, offset=offset)


def write(store: S3Store, name: str, data: bytes, **options: Any) -> S3Writer:
    writer = store.open_write(
        n(name), size=len(data), mtime_ns=1_700_000_000_123_456_789, mode=0o750,
        exclusive=False, limit=LIMIT, **options,
    )  # fmt: skip
    writer.write(data)
    return writer


def stored_parts(writer: S3Writer) -> None:
    """Wait until the parts the writer has sent are stored (or failed)."""
    concurrent.futures.wait(writer._pending)


def test_digest_mtime_and_mode_travel_as_metadata(
    s3_store: S3Store, seaweed: Seaweed, bucket: str, data: bytes
) -> None:
    writer = write(s3_store, "big.bin", data)
    assert writer.commit(tree_digest(data)) == tree_digest(data)
    other = node(seaweed, bucket)  # what another node sees, from the bucket alone
    readable = other.open_read(n("big.bin"))
    assert (readable.digest, readable.mtime_ns, readable.mode) == (
        tree_digest(data), 1_700_000_000_123_456_789, 0o750,
    )  # fmt: skip
    assert readable.read(CHUNK_BYTES - 5, 10) == data[CHUNK_BYTES - 5 : CHUNK_BYTES + 5]
    readable.close()
    assert other.digest(n("big.bin")) == tree_digest(data)
    [entry] = other.list(n(""))
    assert (entry.name, entry.size, entry.mtime_ns) == (
        "big.bin",
        len(data),
        1_700_000_000_123_456_789,
    )
    other.close()


def test_an_upload_is_invisible_until_its_commit_and_gone_after_an_abort(
    s3_store: S3Store, seaweed: Seaweed, bucket: str, data: bytes
) -> None:
    writer = write(s3_store, "big.bin", data)
    stored_parts(writer)
    assert writer._pending, "parts were sent before the commit"
    assert list(s3_store.list(n(""))) == []
    with pytest.raises(NotFound):
        s3_store.stat(n("big.bin"))
    writer.abort()
    assert writer.ended is not None
    writer.ended.result()
    assert uploads(seaweed, bucket) == []
    assert list(s3_store.list(n(""))) == []


def test_a_bad_digest_commits_nothing_and_keeps_no_upload(
    s3_store: S3Store, seaweed: Seaweed, bucket: str, data: bytes
) -> None:
    writer = write(s3_store, "big.bin", data, resume=resume(data))
    with pytest.raises(Exception, match="digest mismatch"):
        writer.commit(ZERO_DIGEST)
    assert uploads(seaweed, bucket) == []
    with pytest.raises(NotFound):
        s3_store.stat(n("big.bin"))


def test_a_resume_lands_on_another_node_and_moves_no_stored_part_again(
    s3_store: S3Store, seaweed: Seaweed, bucket: str, data: bytes
) -> None:
    """Node A stores two parts and dies with the third in its buffer; node B, from
    the bucket alone, resumes after the two: nothing stored is sent again, nothing
    is read again, and the file verifies end to end."""
    a = s3_store.open_write(
        n("big.bin"), size=len(data), mtime_ns=5, mode=None, exclusive=False, limit=LIMIT,
        resume=resume(data),
    )  # fmt: skip
    a.write(data[: 2 * CHUNK_BYTES + 1])  # parts 1 and 2 go; the byte after waits
    stored_parts(a)
    b = node(seaweed, bucket)
    probe = b.partial(n("big.bin"), size=len(data), mtime_ns=5, resume=resume(data))
    chunks = a.chunks[:2]
    assert (probe.offset, probe.prefix) == (2 * CHUNK_BYTES, prefix_digest(chunks))
    resumed = b.open_write(
        n("big.bin"), size=len(data), mtime_ns=5, mode=None, exclusive=False, limit=LIMIT,
        resume=resume(data, offset=probe.offset),
    )  # fmt: skip
    assert resumed.written == 2 * CHUNK_BYTES
    resumed.write(data[probe.offset :])
    assert resumed.commit(tree_digest(data)) == tree_digest(data)
    readable = b.open_read(n("big.bin"))
    assert readable.read(0, len(data)) == data
    readable.close()
    # Node A's upload was taken over: it can no longer commit.
    a.write(data[2 * CHUNK_BYTES + 1 :])
    with pytest.raises((Aborted, StorageIOError, NotFound)):
        a.commit(tree_digest(data))
    assert uploads(seaweed, bucket) == []
    b.close()


def test_a_changed_source_or_another_transfer_is_not_resumed(
    s3_store: S3Store, seaweed: Seaweed, bucket: str, data: bytes
) -> None:
    a = s3_store.open_write(
        n("big.bin"), size=len(data), mtime_ns=5, mode=None, exclusive=False, limit=LIMIT,
        resume=resume(data),
    )  # fmt: skip
    a.write(data[: 2 * CHUNK_BYTES + 1])
    stored_parts(a)
    b = node(seaweed, bucket)
    for size, mtime, asked in [
        (len(data), 6, resume(data)),  # touched
        (len(data) + 1, 5, resume(data)),  # grown
        (len(data), 5, resume(data, transfer_id=b"x" * 16)),  # someone else
        (len(data), 5, resume(b"other" + data)),  # a different first chunk
    ]:
        probe = b.partial(n("big.bin"), size=size, mtime_ns=mtime, resume=asked)
        assert probe.offset == 0
    with pytest.raises(ResumeRefused):
        b.open_write(
            n("big.bin"), size=len(data), mtime_ns=6, mode=None, exclusive=False,
            limit=LIMIT, resume=resume(data, offset=CHUNK_BYTES),
        )  # fmt: skip
    a.abort()
    b.close()


def test_the_sweep_aborts_uploads_whose_writer_is_gone(
    s3_store: S3Store, seaweed: Seaweed, bucket: str, data: bytes
) -> None:
    dead = write(s3_store, "dead.bin", data)  # a node that died mid-upload
    stored_parts(dead)
    assert uploads(seaweed, bucket) == [s3_store.location.prefix + "dead.bin"]
    assert node(seaweed, bucket).sweep_temporaries() == 0  # alive: written just now
    later = node(seaweed, bucket, clock=lambda: time.time() + UPLOAD_GRACE_S + 60)
    assert later.sweep_temporaries() == 1
    assert uploads(seaweed, bucket) == []
    later.close()


def test_wrong_credentials_and_a_missing_bucket_are_said_at_start(
    seaweed: Seaweed, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = bucket.partition("/")[0]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = node(seaweed, bucket)
    with pytest.raises(StorageIOError, match="refused the server's credentials"):
        store.check()
    store.close()
    monkeypatch.undo()
    for key, value in seaweed.environment().items():
        monkeypatch.setenv(key, value)
    missing = S3Store(S3Location(bucket="no-such-" + name, endpoint=seaweed.endpoint))
    with pytest.raises(NotFound, match="has no bucket"):
        missing.check()
    missing.close()


def test_a_store_that_goes_away_fails_the_upload_clearly(own_seaweed: Seaweed, data: bytes) -> None:
    store = S3Store(S3Location(bucket="going-away", endpoint=own_seaweed.endpoint))
    writer = write(store, "big.bin", data)
    stored_parts(writer)
    own_seaweed.kill()
    with pytest.raises(StorageIOError, match="unreachable"):
        writer.commit(tree_digest(data))
    with pytest.raises(StorageIOError, match="unreachable"):
        store.stat(n("big.bin"))
    store.close()
