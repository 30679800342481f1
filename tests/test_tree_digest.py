"""The tree digest (checksum.py): its definition, and that resuming it from chunk
digests gives what hashing the whole file gives."""

from __future__ import annotations

import os
import random

import pytest
import xxhash

from ftransfer.checksum import (
    CHUNK_BYTES,
    ZERO_DIGEST,
    TreeHasher,
    digest_bytes,
    file_digest,
    join_digests,
    prefix_digest,
)


def reference(data: bytes) -> bytes:
    """The definition, written out: plain xxh3-128 up to one chunk, else the
    xxh3-128 of the chunk digests back to back."""
    if len(data) <= CHUNK_BYTES:
        return xxhash.xxh3_128_digest(data)
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    return xxhash.xxh3_128_digest(b"".join(xxhash.xxh3_128_digest(c) for c in chunks))


SIZES = [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES + 5]


@pytest.fixture(scope="module")
def blob() -> bytes:
    return random.Random(7).randbytes(3 * CHUNK_BYTES + 5)


@pytest.mark.parametrize("size", SIZES)
def test_digest_matches_the_definition(blob: bytes, size: int) -> None:
    data = blob[:size]
    assert digest_bytes(data) == reference(data)
    hasher = TreeHasher()
    hasher.update(data)
    assert hasher.digest() == reference(data)
    assert hasher.hashed == size


def test_small_files_keep_plain_xxh3_128(blob: bytes) -> None:
    data = blob[:CHUNK_BYTES]
    assert digest_bytes(data) == xxhash.xxh3_128_digest(data)
    assert digest_bytes(blob[: CHUNK_BYTES + 1]) != xxhash.xxh3_128_digest(blob[: CHUNK_BYTES + 1])


def test_any_split_of_the_updates_gives_the_same_digest(blob: bytes) -> None:
    rng = random.Random(11)
    for _ in range(20):
        hasher = TreeHasher()
        offset = 0
        while offset < len(blob):
            step = rng.choice([1, 17, 4096, 65536, 1 << 20, CHUNK_BYTES, CHUNK_BYTES + 3])
            hasher.update(memoryview(blob)[offset : offset + step])
            offset += step
        assert hasher.digest() == reference(blob)


def test_each_chunk_is_reported_once_in_order(blob: bytes) -> None:
    seen: list[tuple[int, bytes]] = []
    hasher = TreeHasher(on_chunk=lambda index, digest: seen.append((index, digest)))
    hasher.update(blob)
    assert [i for i, _ in seen] == [0, 1, 2]  # the 5-byte tail is no whole chunk
    for index, digest in seen:
        part = blob[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
        assert digest == xxhash.xxh3_128_digest(part)


@pytest.mark.parametrize("whole", [1, 2, 3])
def test_resuming_from_chunk_digests_reads_nothing_before(blob: bytes, whole: int) -> None:
    first = TreeHasher()
    first.update(blob[: whole * CHUNK_BYTES + 12345])  # cut inside the next chunk
    kept = first.chunks[:whole]
    resumed = TreeHasher(chunks=kept)
    resumed.update(blob[whole * CHUNK_BYTES :])
    assert resumed.digest() == reference(blob)
    assert resumed.hashed == len(blob)


def test_a_file_of_exactly_whole_chunks_resumed_at_its_end(blob: bytes) -> None:
    data = blob[: 2 * CHUNK_BYTES]
    first = TreeHasher()
    first.update(data)
    assert TreeHasher(chunks=first.chunks).digest() == reference(data)
    one = blob[:CHUNK_BYTES]
    assert TreeHasher(chunks=[xxhash.xxh3_128_digest(one)]).digest() == reference(one)


def test_join_and_prefix_digests() -> None:
    a, b = bytes(range(16)), bytes(range(16, 32))
    assert join_digests([a]) == a
    assert join_digests([a, b]) == xxhash.xxh3_128_digest(a + b)
    assert prefix_digest([]) == ZERO_DIGEST
    assert prefix_digest([a]) == xxhash.xxh3_128_digest(a)  # not a itself: a prefix is no file


def test_file_digest_of_an_open_file(tmp_path: os.PathLike[str], blob: bytes) -> None:
    path = os.path.join(tmp_path, "f")
    with open(path, "wb") as out:
        out.write(blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert file_digest(fd) == reference(blob)
    finally:
        os.close(fd)


def test_protocol_md_test_vectors_are_what_the_code_computes() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / "protocol.md").read_text()
    one, two = bytes(CHUNK_BYTES), bytes(CHUNK_BYTES + 1)
    assert digest_bytes(one).hex() in text
    assert digest_bytes(two).hex() in text
    assert prefix_digest([xxhash.xxh3_128_digest(one)]).hex() in text
    assert digest_bytes(b"").hex() in text
