"""Resumable uploads through the server's operations on a real directory (no
sockets): a partial is the user's own, two clients at once never share one, and a
GET_AT gets the rest only of the very file it began."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from ftransfer.checksum import CHUNK_BYTES, ZERO_DIGEST, digest_bytes, prefix_digest
from ftransfer.errors import DirectoryNotEmpty, ResumeRefused, StorageIOError
from ftransfer.server.operations import Operations, Policy, Principal, Requester, Resumable
from ftransfer.storage.local import LocalStore

SIZE = 3 * CHUNK_BYTES + 99
ALICE = Requester(
    peer="192.0.2.1:1", transport="tcp", principal=Principal(user="alice", write=True)
)
BOB = Requester(peer="192.0.2.2:2", transport="tcp", principal=Principal(user="bob", write=True))
ALICE_ANY = Requester(
    peer="192.0.2.1:1", transport="tcp", principal=Principal(user="alice", write=True, delete=True)
)
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


def test_two_clients_at_once_never_share_a_partial(
    ops: Operations, tmp_path: Path, data: bytes
) -> None:
    """One resumes the partial; another client (another transfer id) uploading
    the same name meanwhile is written as an ordinary upload beside it: both
    commit whole, neither mixes the other's bytes in, last commit wins."""
    cut_upload(ops, ALICE, data, ID_A, 2 * CHUNK_BYTES)
    first_digest = digest_bytes(data[:CHUNK_BYTES])
    resume = Resumable(transfer_id=ID_A, first_digest=first_digest, offset=2 * CHUNK_BYTES)
    first = ops.upload(ALICE, "big", size=SIZE, mtime_ns=5, resumable=resume)
    other = data[::-1]
    fresh = Resumable(transfer_id=ID_B, first_digest=ZERO_DIGEST)
    second = ops.upload(ALICE, "big", size=SIZE, mtime_ns=5, resumable=fresh)
    with second:
        second.write(other)
        assert second.commit(digest_bytes(other)) == digest_bytes(other)
    assert (tmp_path / "big").read_bytes() == other
    with first:
        first.write(data[2 * CHUNK_BYTES :])
        assert first.commit(digest_bytes(data)) == digest_bytes(data)
    assert (tmp_path / "big").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ftransfer")] == []


def test_the_same_transfer_again_takes_the_partial_over(
    ops: Operations, tmp_path: Path, data: bytes
) -> None:
    """The transfer id is the client's secret: a request with it comes from that
    client, restarted (its old UDP session, or a TCP connection whose network
    dropped, may still hold the partial). The old upload ends, keeping the
    partial, and the new one resumes from it."""
    first_digest = digest_bytes(data[:CHUNK_BYTES])
    old = ops.upload(
        ALICE,
        "big",
        size=SIZE,
        mtime_ns=5,
        resumable=Resumable(transfer_id=ID_A, first_digest=ZERO_DIGEST),
    )
    old.write(data[: 2 * CHUNK_BYTES])  # ...and its client is killed: no end here
    resume = Resumable(transfer_id=ID_A, first_digest=first_digest, offset=2 * CHUNK_BYTES)
    new = ops.upload(ALICE, "big", size=SIZE, mtime_ns=5, resumable=resume)
    assert old.ended
    with pytest.raises(StorageIOError):
        old.write(b"late bytes of the dead session")
    with new:
        new.write(data[2 * CHUNK_BYTES :])
        assert new.commit(digest_bytes(data)) == digest_bytes(data)
    assert (tmp_path / "big").read_bytes() == data


def test_one_upload_record_per_local_process(tmp_path: Path, data: bytes) -> None:
    """Two client processes putting the same file to the same place: the second
    finds the record held and uploads without one (not resumable), so they never
    present one transfer id at once."""
    from ftransfer.client.local import LocalFile
    from ftransfer.client.resume import Resumes

    source = tmp_path / "src.bin"
    source.write_bytes(data)
    resumes = Resumes("192.0.2.9:9021", "alice", state_dir=str(tmp_path / "state"))
    with LocalFile(str(source)) as one, LocalFile(str(source)) as two:
        first = resumes.upload(one, "big")
        assert first is not None
        assert resumes.upload(two, "big") is None
        _start, hasher = first.start(None, one)
        hasher.update(data[:CHUNK_BYTES])  # one chunk read (and recorded), then a cut
        first.close()
        again = resumes.upload(two, "big")
        assert again is not None and again.resumable
        assert again.transfer_id == first.transfer_id and again.chunks == chunk_digests(data, 1)
        again.close()


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


def test_removing_a_directory_drops_the_partials_nobody_writes(
    ops: Operations, tmp_path: Path, data: bytes
) -> None:
    """A directory that lists as empty is removable: an interrupted upload's
    partial in it goes with it (not being resumed there any more); one being
    written keeps it from going."""
    ops.mkdir(ALICE_ANY, "d", parents=False)
    upload = ops.upload(
        ALICE_ANY,
        "d/big",
        size=SIZE,
        mtime_ns=5,
        resumable=Resumable(transfer_id=ID_A, first_digest=ZERO_DIGEST),
    )
    upload.write(data[:CHUNK_BYTES])
    assert list(ops.listing(ALICE_ANY, "d")) == []
    with pytest.raises(DirectoryNotEmpty, match="running"):
        ops.remove(ALICE_ANY, "d")
    upload.abort("the connection was lost")  # the partial stays, for a resume...
    ops.remove(ALICE_ANY, "d")  # ...unless the directory goes
    assert not (tmp_path / "d").exists()
