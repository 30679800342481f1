"""Resumable uploads through the server's operations on a real directory (no
sockets): a partial is the user's own, two clients at once never share one, and a
GET_AT gets the rest only of the very file it began."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from ftransfer.checksum import CHUNK_BYTES, ZERO_DIGEST, digest_bytes, prefix_digest
from ftransfer.errors import ResumeRefused
from ftransfer.server.operations import Operations, Policy, Principal, Requester, Resumable
from ftransfer.storage.local import LocalStore

SIZE = 3 * CHUNK_BYTES + 99
ALICE = Requester(
    peer="192.0.2.1:1", transport="tcp", principal=Principal(user="alice", write=True)
)
BOB = Requester(peer="192.0.2.2:2", transport="tcp", principal=Principal(user="bob", write=True))
ID_A, ID_B = b"A" * 16, b"B" * 16


@pytest.fixture(scope="module")
def data() -> bytes:
    return random.Random(9).randbytes(SIZE)


@pytest.fixture
def ops(tmp_path: Path) -> Operations:
    return Operations(LocalStore(tmp_path, fsync=False), Policy(anonymous_write=True))


def chunk_digests(data: bytes, count: int) -> list[bytes]:
    return [digest_bytes(data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]) for i in range(count)]


def cut_upload(ops: Operations, who: Requester, data: bytes, transfer_id: bytes, n: int) -> None:
    upload = ops.upload(
        who,
        "big",
        size=SIZE,
        mtime_ns=5,
        resumable=Resumable(transfer_id=transfer_id, first_digest=ZERO_DIGEST),
    )
    with upload:
        upload.write(data[:n])  # then the connection is lost: no commit


def probe(ops: Operations, who: Requester, data: bytes, transfer_id: bytes) -> int:
    first = digest_bytes(data[:CHUNK_BYTES])
    held = ops.partial(
        who,
        "big",
        size=SIZE,
        mtime_ns=5,
        resumable=Resumable(transfer_id=transfer_id, first_digest=first),
    )
    return held.offset


def test_another_users_partial_is_never_spliced(ops: Operations, data: bytes) -> None:
    cut_upload(ops, ALICE, data, ID_A, 2 * CHUNK_BYTES + 7)
    assert probe(ops, ALICE, data, ID_A) == 2 * CHUNK_BYTES
    assert probe(ops, BOB, data, ID_A) == 0  # even knowing the id: the partial is alice's
    with pytest.raises(ResumeRefused):
        ops.upload(
            BOB,
            "big",
            size=SIZE,
            mtime_ns=5,
            resumable=Resumable(
                transfer_id=ID_A, first_digest=digest_bytes(data[:CHUNK_BYTES]), offset=CHUNK_BYTES
            ),
        )


def test_two_clients_resuming_one_partial_at_once(
    ops: Operations, tmp_path: Path, data: bytes
) -> None:
    """The first holds the partial; the second is refused the resume and its
    fresh upload is an ordinary one beside it: both commit whole, neither mixes
    the other's bytes in."""
    cut_upload(ops, ALICE, data, ID_A, 2 * CHUNK_BYTES)
    first_digest = digest_bytes(data[:CHUNK_BYTES])
    resume = Resumable(transfer_id=ID_A, first_digest=first_digest, offset=2 * CHUNK_BYTES)
    first = ops.upload(ALICE, "big", size=SIZE, mtime_ns=5, resumable=resume)
    with pytest.raises(ResumeRefused, match="another transfer"):
        ops.upload(ALICE, "big", size=SIZE, mtime_ns=5, resumable=resume)
    other = data[::-1]
    second = ops.upload(
        ALICE,
        "big",
        size=SIZE,
        mtime_ns=5,
        resumable=Resumable(transfer_id=ID_B, first_digest=ZERO_DIGEST),
    )
    with second:
        second.write(other)
        assert second.commit(digest_bytes(other)) == digest_bytes(other)
    assert (tmp_path / "big").read_bytes() == other
    with first:
        first.write(data[2 * CHUNK_BYTES :])
        assert first.commit(digest_bytes(data)) == digest_bytes(data)
    assert (tmp_path / "big").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ftransfer")] == []


def test_get_at_resumes_only_the_same_file(ops: Operations, tmp_path: Path, data: bytes) -> None:
    (tmp_path / "f").write_bytes(data)
    os.utime(tmp_path / "f", ns=(7, 7))
    chunks = chunk_digests(data, 2)
    with ops.download(ALICE, "f") as download:
        assert download.resume_point(2 * CHUNK_BYTES, SIZE, 7, prefix_digest(chunks)) == chunks
        assert download.resume_point(2 * CHUNK_BYTES, SIZE, 8, prefix_digest(chunks)) == []
        assert download.resume_point(2 * CHUNK_BYTES, SIZE + 1, 7, prefix_digest(chunks)) == []
        assert download.resume_point(2 * CHUNK_BYTES, SIZE, 7, prefix_digest(chunks[:1])) == []
        assert download.resume_point(CHUNK_BYTES + 1, SIZE, 7, prefix_digest(chunks)) == []
