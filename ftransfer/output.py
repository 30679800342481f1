"""What the CLI prints: transfer records, listings, stat blocks, UDP link summaries.

Shared by the TCP and UDP commands so both print the same shapes; names are
escaped (control characters shown as \\xNN) before they reach a terminal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TextIO

from .checksum import ZERO_DIGEST, hex_digest
from .client import TransferResult
from .proto.tcp.events import Entry, EntryKind
from .storage import escape

_KIND_LETTER = {
    EntryKind.FILE: "-",
    EntryKind.DIRECTORY: "d",
    EntryKind.SYMLINK: "l",
    EntryKind.OTHER: "?",
}


def transfer_record(result: TransferResult) -> dict[str, Any]:
    seconds = max(result.seconds, 1e-9)
    return {
        "path": result.remote,
        "local": result.local,
        "bytes": result.size,
        "seconds": round(result.seconds, 6),
        "bytes_per_second": round(result.size / seconds),
        "xxh3_128": hex_digest(result.digest),
    }


def print_record(record: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(record) + "\n")


def format_time(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def entry_record(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "type": entry.kind.name.lower(),
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
    }


def print_listing(entries: list[Entry], *, as_json: bool, out: TextIO) -> None:
    for entry in sorted(entries, key=lambda e: e.name):
        if as_json:
            print_record(entry_record(entry), out)
            continue
        suffix = "/" if entry.kind is EntryKind.DIRECTORY else ""
        when = format_time(entry.mtime_ns)
        out.write(
            f"{_KIND_LETTER[entry.kind]} {entry.size:>14} {when} {escape(entry.name)}{suffix}\n"
        )


def print_stat(name: str, entry: Entry, digest: bytes, *, as_json: bool, out: TextIO) -> None:
    record = entry_record(entry)
    record["name"] = name
    record["mtime"] = format_time(entry.mtime_ns)
    record["xxh3_128"] = hex_digest(digest) if digest != ZERO_DIGEST else None
    if as_json:
        print_record(record, out)
        return
    for key in ("name", "type", "size", "mtime", "xxh3_128"):
        if record[key] is not None:
            value = escape(record[key]) if isinstance(record[key], str) else record[key]
            out.write(f"{key}: {value}\n")
