"""Resumable partials (storage/partial.py, journal.py), in process on real files:
a write cut anywhere resumes at the last whole chunk it journaled, the journal is
trusted only as far as it is intact, and a partial is never spliced into a
transfer it was not made for."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from ftransfer.checksum import CHUNK_BYTES, ZERO_DIGEST, digest_bytes, prefix_digest
from ftransfer.errors import IntegrityError, ResumeRefused
from ftransfer.storage.atomic import Directory
from ftransfer.storage.base import Resume
from ftransfer.storage.journal import RECORD
from ftransfer.storage.partial import (
    JOURNAL_SUFFIX,
    PartialBusy,
    PartialWriter,
    inspect,
    partial_leaf,
    sweep_partials,
)

SIZE = 3 * CHUNK_BYTES + 1234
BINDING = {"user": "alice", "name": "big.bin"}
ID = bytes(range(16))
MTIME = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def data() -> bytes:
    return random.Random(3).randbytes(SIZE)


def writer(
    tmp_path: Path, resume: Resume, *, size: int = SIZE, fsync: bool = False
) -> PartialWriter:
    return PartialWriter(
        Directory(str(tmp_path)),
        "big.bin",
        resume=resume,
        ttl_s=3600,
        size=size,
        mtime_ns=MTIME,
        mode=0o644,
        exclusive=False,
        fsync=fsync,
    )


def fresh() -> Resume:
    return Resume(binding=BINDING, transfer_id=ID, first_digest=ZERO_DIGEST)


def first_chunk(data: bytes) -> bytes:
    return digest_bytes(data[:CHUNK_BYTES])


def resume_at(data: bytes, offset: int, **changes: object) -> Resume:
    fields: dict[str, object] = {
        "binding": BINDING,
        "transfer_id": ID,
        "first_digest": first_chunk(data),
        "offset": offset,
    }
    fields.update(changes)
    return Resume(**fields)  # type: ignore[arg-type]


def interrupted(tmp_path: Path, data: bytes, cut: int) -> None:
    """Write ``cut`` bytes, then end without a commit (a lost connection)."""
    w = writer(tmp_path, fresh())
    for start in range(0, cut, 1 << 20):
        w.write(data[start : min(cut, start + (1 << 20))])
    w.abort()


def probe(tmp_path: Path, data: bytes, **changes: object) -> int:
    resume = resume_at(data, 0, **changes)
    return inspect(Directory(str(tmp_path)), resume, size=SIZE, mtime_ns=MTIME, ttl_s=3600).offset


def finish(tmp_path: Path, data: bytes, offset: int) -> bytes:
    w = writer(tmp_path, resume_at(data, offset))
    assert w.written == offset
    w.write(data[offset:])
    return w.commit(digest_bytes(data))


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "big.bin")


@pytest.mark.parametrize("cut", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, SIZE - 1])
def test_a_cut_write_resumes_at_its_last_whole_chunk(tmp_path: Path, data: bytes, cut: int) -> None:
    interrupted(tmp_path, data, cut)
    assert leftovers(tmp_path) == sorted(
        [partial_leaf(BINDING), partial_leaf(BINDING) + JOURNAL_SUFFIX]
    )
    offset = probe(tmp_path, data)
    assert offset == (cut // CHUNK_BYTES) * CHUNK_BYTES
    assert finish(tmp_path, data, offset) == digest_bytes(data)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert os.stat(tmp_path / "big.bin").st_mtime_ns == MTIME
    assert leftovers(tmp_path) == []  # the journal went with the commit


def test_random_cuts_and_every_boundary_resume_to_the_same_file(
    tmp_path: Path, data: bytes
) -> None:
    rng = random.Random(5)
    cuts = [rng.randrange(SIZE) for _ in range(4)] + [k * CHUNK_BYTES for k in range(4)]
    for cut in cuts:
        interrupted(tmp_path, data, cut)
        offset = probe(tmp_path, data)
        assert offset == (cut // CHUNK_BYTES) * CHUNK_BYTES
        # a resume may also start earlier than it could, never later
        start = max(0, offset - CHUNK_BYTES)
        assert finish(tmp_path, data, start) == digest_bytes(data)
        assert (tmp_path / "big.bin").read_bytes() == data


def test_the_prefix_digest_is_of_the_journaled_chunks(tmp_path: Path, data: bytes) -> None:
    interrupted(tmp_path, data, 2 * CHUNK_BYTES + 5)
    got = inspect(
        Directory(str(tmp_path)), resume_at(data, 0), size=SIZE, mtime_ns=MTIME, ttl_s=3600
    )
    chunks = [digest_bytes(data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]) for i in range(2)]
    assert got.offset == 2 * CHUNK_BYTES and got.prefix == prefix_digest(chunks)


def test_resuming_past_what_the_journal_holds_is_refused(tmp_path: Path, data: bytes) -> None:
    interrupted(tmp_path, data, CHUNK_BYTES + 10)
    with pytest.raises(ResumeRefused):
        writer(tmp_path, resume_at(data, 2 * CHUNK_BYTES))
    with pytest.raises(ResumeRefused):
        writer(tmp_path, resume_at(data, 100))  # not a chunk boundary


@pytest.mark.parametrize(
    "change",
    [
        {"binding": {"user": "mallory", "name": "big.bin"}},
        {"transfer_id": bytes(16)},
        {"first_digest": digest_bytes(b"another source")},
    ],
    ids=["other-user", "other-transfer", "changed-source"],
)
def test_a_foreign_or_changed_partial_is_never_spliced(
    tmp_path: Path, data: bytes, change: dict[str, object]
) -> None:
    interrupted(tmp_path, data, 2 * CHUNK_BYTES)
    assert probe(tmp_path, data, **change) == 0
    if "binding" not in change:  # (another binding looks in another place)
        with pytest.raises(ResumeRefused):
            writer(tmp_path, resume_at(data, CHUNK_BYTES, **change))


def test_a_changed_size_or_mtime_is_another_file(tmp_path: Path, data: bytes) -> None:
    interrupted(tmp_path, data, 2 * CHUNK_BYTES)
    directory = Directory(str(tmp_path))
    resume = resume_at(data, 0)
    assert inspect(directory, resume, size=SIZE + 1, mtime_ns=MTIME, ttl_s=3600).offset == 0
    assert inspect(directory, resume, size=SIZE, mtime_ns=MTIME + 1, ttl_s=3600).offset == 0


def journal_path(tmp_path: Path) -> Path:
    return tmp_path / (partial_leaf(BINDING) + JOURNAL_SUFFIX)


def test_a_truncated_journal_is_trusted_up_to_its_last_whole_record(
    tmp_path: Path, data: bytes
) -> None:
    interrupted(tmp_path, data, 3 * CHUNK_BYTES)
    path = journal_path(tmp_path)
    os.truncate(path, path.stat().st_size - RECORD.size // 2)  # a torn last record
    offset = probe(tmp_path, data)
    assert offset == 2 * CHUNK_BYTES
    assert finish(tmp_path, data, offset) == digest_bytes(data)


def test_a_corrupted_record_ends_what_the_journal_says(tmp_path: Path, data: bytes) -> None:
    interrupted(tmp_path, data, 3 * CHUNK_BYTES)
    path = journal_path(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-RECORD.size - 3] ^= 0x40  # inside record 1 of 0..2
    path.write_bytes(bytes(raw))
    assert probe(tmp_path, data) == CHUNK_BYTES


def test_a_corrupted_header_makes_no_journal(tmp_path: Path, data: bytes) -> None:
    interrupted(tmp_path, data, 2 * CHUNK_BYTES)
    path = journal_path(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0x01
    path.write_bytes(bytes(raw))
    assert probe(tmp_path, data) == 0
    with pytest.raises(ResumeRefused):
        writer(tmp_path, resume_at(data, CHUNK_BYTES))


@pytest.mark.parametrize("damage", ["removed", "shortened", "last-chunk-changed"])
def test_a_partial_that_lost_what_its_journal_promises_is_not_resumed(
    tmp_path: Path, data: bytes, damage: str
) -> None:
    """The journal is a promise about the partial's bytes. A partial that is gone,
    shorter than its journal, or whose last journaled chunk (read again: the one
    chunk this side reads twice) no longer has its digest, is refused, so the
    sender starts over instead of zeros or stale bytes being spliced in."""
    interrupted(tmp_path, data, 2 * CHUNK_BYTES + 5)
    path = tmp_path / partial_leaf(BINDING)
    if damage == "removed":
        path.unlink()
    elif damage == "shortened":
        os.truncate(path, CHUNK_BYTES + 3)
    else:
        with open(path, "r+b") as f:
            f.seek(CHUNK_BYTES + 5)
            f.write(b"X")
    with pytest.raises(ResumeRefused):
        writer(tmp_path, resume_at(data, 2 * CHUNK_BYTES))
    assert not (tmp_path / "big.bin").exists()
    assert finish_fresh(tmp_path, data) == digest_bytes(data)


def finish_fresh(tmp_path: Path, data: bytes) -> bytes:
    w = writer(tmp_path, fresh())
    w.write(data)
    return w.commit(digest_bytes(data))


def test_a_commit_leaves_no_journal_to_resume_from(tmp_path: Path, data: bytes) -> None:
    """After the rename nothing may resume into the committed file: the journal is
    emptied before it and removed after (and the partial's name is gone)."""
    w = writer(tmp_path, fresh())
    w.write(data)
    w.commit(digest_bytes(data))
    assert probe(tmp_path, data) == 0
    with pytest.raises(ResumeRefused):
        writer(tmp_path, resume_at(data, CHUNK_BYTES))


def test_an_expired_partial_is_not_resumed_and_is_swept(tmp_path: Path, data: bytes) -> None:
    interrupted(tmp_path, data, 2 * CHUNK_BYTES)
    directory = Directory(str(tmp_path))
    old = os.stat(journal_path(tmp_path)).st_mtime - 7200
    for path in (journal_path(tmp_path), tmp_path / partial_leaf(BINDING)):
        os.utime(path, (old, old))
    assert inspect(directory, resume_at(data, 0), size=SIZE, mtime_ns=MTIME, ttl_s=3600).offset == 0
    assert sweep_partials(directory, 3600) == 1
    assert leftovers(tmp_path) == []


def test_a_fresh_partial_is_kept_by_the_sweep(tmp_path: Path, data: bytes) -> None:
    interrupted(tmp_path, data, CHUNK_BYTES)
    assert sweep_partials(Directory(str(tmp_path)), 3600) == 0
    assert len(leftovers(tmp_path)) == 2


def test_a_partial_being_written_is_busy_for_a_second_writer(tmp_path: Path, data: bytes) -> None:
    first = writer(tmp_path, fresh())
    first.write(data[:CHUNK_BYTES])
    with pytest.raises(PartialBusy):
        writer(tmp_path, resume_at(data, CHUNK_BYTES))
    assert sweep_partials(Directory(str(tmp_path)), -1) == 0  # held: not removed
    first.write(data[CHUNK_BYTES:])
    assert first.commit(digest_bytes(data)) == digest_bytes(data)


def test_more_bytes_than_declared_removes_the_partial(tmp_path: Path, data: bytes) -> None:
    w = writer(tmp_path, fresh(), size=10)
    with pytest.raises(IntegrityError):
        w.write(data[:11])
    assert leftovers(tmp_path) == []


def test_a_fresh_write_replaces_an_old_partial(tmp_path: Path, data: bytes) -> None:
    interrupted(tmp_path, data, 2 * CHUNK_BYTES)
    other = writer(
        tmp_path, Resume(binding=BINDING, transfer_id=b"\1" * 16, first_digest=ZERO_DIGEST)
    )
    other.abort()
    assert probe(tmp_path, data) == 0  # the old transfer's chunks are gone


def test_a_syncing_writer_journals_every_whole_chunk_by_the_time_it_ends(
    tmp_path: Path, data: bytes
) -> None:
    """With fsync, records are appended by the writer's flusher thread after each
    fdatasync; ending the write waits for them, so none is lost and none comes
    before its bytes."""
    w = writer(tmp_path, fresh(), fsync=True)
    for start in range(0, 3 * CHUNK_BYTES + 10, 1 << 20):
        w.write(data[start : min(3 * CHUNK_BYTES + 10, start + (1 << 20))])
    w.abort()
    assert probe(tmp_path, data) == 3 * CHUNK_BYTES
    resumed = writer(tmp_path, resume_at(data, 3 * CHUNK_BYTES), fsync=True)
    resumed.write(data[3 * CHUNK_BYTES :])
    assert resumed.commit(digest_bytes(data)) == digest_bytes(data)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert leftovers(tmp_path) == []


def test_a_lock_on_a_journal_unlinked_meanwhile_is_not_trusted(
    tmp_path: Path, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that opened the journal just before another one ended (removing
    it) would hold the lock of a file no longer at the name: it must open again,
    or two writers could share one partial."""
    interrupted(tmp_path, data, CHUNK_BYTES)
    stale = os.open(journal_path(tmp_path), os.O_RDWR | os.O_APPEND)
    os.unlink(journal_path(tmp_path))  # the other writer ended, and removed both
    os.unlink(tmp_path / partial_leaf(BINDING))
    real = Directory.open_rw
    handed: list[int] = []

    def stale_first(self: Directory, leaf: str, extra: int = 0, *, create: bool = True) -> int:
        if leaf.endswith(JOURNAL_SUFFIX) and not handed:
            handed.append(stale)
            return os.dup(stale)
        return real(self, leaf, extra, create=create)

    monkeypatch.setattr(Directory, "open_rw", stale_first)
    w = writer(tmp_path, fresh())
    w.write(data[: 2 * CHUNK_BYTES])
    w.abort()
    os.close(stale)
    assert handed and probe(tmp_path, data) == 2 * CHUNK_BYTES  # journaled at the name
