"""client/skip.py: the quick check, and local digests read once per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftransfer.checksum import digest_bytes
from ftransfer.client import digests, skip
from ftransfer.client.digests import DigestMemory
from ftransfer.errors import UsageError


def test_a_local_digest_is_read_once_while_the_file_does_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    reads: list[int] = []
    from ftransfer.checksum import file_digest as real

    def counted(fd: int, scratch: bytearray | None = None) -> bytes:
        reads.append(fd)
        return real(fd)

    monkeypatch.setattr(skip, "file_digest", counted)
    monkeypatch.setattr(digests, "RACY_S", -1.0)  # (the file was just written)
    memory = DigestMemory(str(tmp_path / "state" / "digests"))
    st = os.stat(path)
    assert skip.local_digest(str(path), st, memory) == digest_bytes(b"one")
    assert skip.local_digest(str(path), st, memory) == digest_bytes(b"one")
    assert len(reads) == 1
    # another process (a new memory over the same file): nothing is read again
    later = DigestMemory(str(tmp_path / "state" / "digests"))
    assert skip.local_digest(str(path), st, later) == digest_bytes(b"one")
    assert len(reads) == 1
    path.write_bytes(b"two")  # a new mtime and ctime: read again
    os.utime(path, ns=(st.st_mtime_ns + 1, st.st_mtime_ns + 1))
    assert skip.local_digest(str(path), os.stat(path), later) == digest_bytes(b"two")
    assert len(reads) == 2


def test_a_torn_or_flipped_record_is_never_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digests, "RACY_S", -1.0)
    path = tmp_path / "f"
    path.write_bytes(b"data")
    st = os.stat(path)
    store = tmp_path / "digests"
    DigestMemory(str(store)).put(st, b"D" * 16)
    raw = bytearray(store.read_bytes())
    raw[30] ^= 1  # flip a bit of the key
    store.write_bytes(bytes(raw) + raw[:10])  # and a torn record after it
    assert DigestMemory(str(store)).get(st) is None
    store.unlink()
    DigestMemory(str(store)).put(st, b"D" * 16)
    assert DigestMemory(str(store)).get(st) == b"D" * 16


def test_the_memory_is_compacted_to_its_newest_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digests, "MAX_RECORDS", 3)
    monkeypatch.setattr(digests, "RACY_S", -1.0)
    store = tmp_path / "digests"
    memory = DigestMemory(str(store))
    files = []
    for n in range(8):
        path = tmp_path / f"f{n}"
        path.write_bytes(bytes([n]))
        files.append(os.stat(path))
        memory.put(files[-1], bytes([n]) * 16)
    assert store.stat().st_size <= 2 * 3 * digests.RECORD.size
    fresh = DigestMemory(str(store))
    assert fresh.get(files[-1]) == bytes([7]) * 16  # the newest survive
    assert fresh.get(files[0]) is None


def test_the_quick_check_wants_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    os.utime(path, ns=(5, 5))
    st = skip.local_stat(str(path))
    assert st is not None
    assert skip.same_quick(3, 5, st) and not skip.same_quick(3, 6, st)
    assert not skip.same_quick(4, 5, st)
    assert skip.local_stat(str(tmp_path)) is None  # a directory is no file to compare
    assert skip.local_stat(str(tmp_path / "missing")) is None


def test_an_unknown_mode_is_a_usage_error() -> None:
    skip.check_mode(None)
    skip.check_mode("update")
    with pytest.raises(UsageError, match="update, checksum"):
        skip.check_mode("sizes")


def test_a_file_changed_just_now_is_not_remembered_across_runs(tmp_path: Path) -> None:
    """Git's "racily clean" rule: a file whose ctime is within RACY_S of now could
    change again within the same timestamp tick, keeping its key."""
    path = tmp_path / "f"
    path.write_bytes(b"fresh")
    memory = DigestMemory(str(tmp_path / "digests"))
    memory.put(os.stat(path), b"D" * 16)
    assert not (tmp_path / "digests").exists()
    assert DigestMemory(str(tmp_path / "digests")).get(os.stat(path)) is None
