"""Journals: the chunk manifest of a partial file, so a transfer resumes where it
stopped without reading again what came before.

Theory of operation
-------------------
A journal is a small file beside (or, for a client's uploads, about) a partial
transfer. It says what the partial is for and which of its chunks are whole:

    FTJ1 <header JSON> <xxh3-64 of the JSON, 16 hex>\\n
    record 0, record 1, ...      each: digest[16] check u64

The header binds the partial: ``binding`` (who and where: the user and the name
on a server; the server, user and remote path on a client), the file's ``size``
and ``mtime_ns``, and the random ``id`` of the transfer that made it. Record *i*
is the tree digest's chunk *i* (checksum.py) and ``check`` is the xxh3-64 of the
id, the index and the digest, so a record that was torn, flipped or copied from
another journal ends the valid part: a journal is trusted up to its first bad
record and no further, and a bad header makes it no journal at all.

Records are appended only after the chunk's bytes are in the partial (and, when
the writer syncs, flushed to disk first: see partial.py), so every record a
journal holds describes bytes the partial really has. The file is opened with
O_APPEND; nothing is ever rewritten in place except by truncation to a record
boundary.
"""

from __future__ import annotations

import os
import struct

from .._records import Record
from ..checksum import DIGEST_BYTES, check64

MAGIC = b"FTJ1 "
RECORD = struct.Struct(">16sQ")
MAX_HEADER_BYTES = 16 * 1024
"""A header longer than this is no journal (names are at most 4 KiB)."""

Binding = dict[str, str]


class Header(Record):
    """What a partial is for."""

    binding: Binding
    size: int
    mtime_ns: int
    transfer_id: bytes


def _check(data: bytes) -> str:
    return f"{check64(data):016x}"


def encode_header(header: Header) -> bytes:
    import json

    body = json.dumps(
        {
            "binding": header.binding,
            "size": header.size,
            "mtime_ns": header.mtime_ns,
            "id": header.transfer_id.hex(),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return MAGIC + body + b" " + _check(body).encode() + b"\n"


def _decode_header(line: bytes) -> Header | None:
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        return None
    body, _, check = line[len(MAGIC) : -1].rpartition(b" ")
    if _check(body).encode() != check:
        return None
    import json  # (only when there is a journal to read: a small transfer needs none)

    try:
        raw = json.loads(body)
        binding = raw["binding"]
        if not isinstance(binding, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in binding.items()
        ):
            return None
        size, mtime_ns, transfer_id = raw["size"], raw["mtime_ns"], bytes.fromhex(raw["id"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(size, int) or not isinstance(mtime_ns, int) or len(transfer_id) != 16:
        return None
    return Header(binding=binding, size=size, mtime_ns=mtime_ns, transfer_id=transfer_id)


def record_bytes(transfer_id: bytes, index: int, digest: bytes) -> bytes:
    """Record ``index`` of a journal (its check binds it to the id and its place)."""
    check = check64(transfer_id + index.to_bytes(8, "big") + digest)
    return RECORD.pack(digest, check)


class Contents(Record):
    """A journal as read: its header, the digests of its valid records, and where
    its records start (to truncate to a record boundary)."""

    header: Header
    chunks: list[bytes]
    records_at: int


def read_journal(fd: int) -> Contents | None:
    """The journal open at ``fd``, trusted up to its first bad record; None if it
    has no valid header (then it says nothing)."""
    data = os.pread(fd, MAX_HEADER_BYTES, 0)
    end = data.find(b"\n")
    if end < 0:
        return None
    header = _decode_header(data[: end + 1])
    if header is None:
        return None
    records_at = end + 1
    chunks: list[bytes] = []
    offset = records_at
    while True:
        block = os.pread(fd, RECORD.size * 4096, offset)
        for start in range(0, len(block) - RECORD.size + 1, RECORD.size):
            digest = block[start : start + DIGEST_BYTES]
            if (
                record_bytes(header.transfer_id, len(chunks), digest)
                != (block[start : start + RECORD.size])
            ):
                return Contents(header=header, chunks=chunks, records_at=records_at)
            chunks.append(digest)
        if len(block) < RECORD.size * 4096:
            return Contents(header=header, chunks=chunks, records_at=records_at)
        offset += len(block)


def start_journal(fd: int, header: Header) -> int:
    """Make the journal at ``fd`` a fresh one for ``header``; returns where its
    records start."""
    os.ftruncate(fd, 0)
    line = encode_header(header)
    os.write(fd, line)  # (O_APPEND: at the end, which is now 0)
    return len(line)


def keep_records(fd: int, records_at: int, count: int) -> None:
    """Drop every record after the first ``count``."""
    os.ftruncate(fd, records_at + count * RECORD.size)


def append_record(fd: int, transfer_id: bytes, index: int, digest: bytes) -> None:
    """Append record ``index`` (the descriptor is open with O_APPEND)."""
    os.write(fd, record_bytes(transfer_id, index, digest))


__all__ = [
    "Binding",
    "Contents",
    "Header",
    "append_record",
    "encode_header",
    "keep_records",
    "read_journal",
    "record_bytes",
    "start_journal",
]
