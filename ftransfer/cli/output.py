"""What the CLI prints: transfer records, listings, stat blocks, link summaries.

One shape for every transport; names are escaped (control characters shown as
\\xNN) before they reach a terminal, addresses printed with IPv6 in brackets,
rates in decimal units (MB/s = 10^6 bytes/s), as the progress bars show them.
"""

from __future__ import annotations

import stat as stat_module
import sys

from ..checksum import DIGEST_ALGORITHM
from ..client import Entry, EntryKind, Stat, TransferResult, escape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

_KIND_LETTER = {
    EntryKind.FILE: "-",
    EntryKind.DIRECTORY: "d",
    EntryKind.SYMLINK: "l",
    EntryKind.OTHER: "?",
}


def format_time(mtime_ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def record_line(record: dict[str, Any]) -> str:
    """One --json record as a line of text (without the newline)."""
    import json

    return json.dumps(record)


def print_record(record: dict[str, Any], out: TextIO) -> None:
    out.write(record_line(record) + "\n")


def transfer_record(result: TransferResult) -> dict[str, Any]:
    """The --json object of a transfer (with the link's figures for UDP and TFTP)."""
    record: dict[str, Any] = {
        "path": result.path,
        "local": result.local,
        "bytes": result.bytes,
        "seconds": round(result.seconds, 6),
        "bytes_per_second": round(result.bytes_per_second),
        "digest": result.digest.hex(),
        "digest_algorithm": DIGEST_ALGORITHM,
        "transport": result.transport,
        "verified": result.verified,
        "resumed_from": result.resumed_from,
    }
    if result.stats is not None:
        for key, value in (
            ("datagrams_sent", result.stats.datagrams_sent),
            ("datagrams_received", result.stats.datagrams_received),
            ("retransmitted", result.stats.retransmitted),
            ("duplicates", result.stats.duplicates),
            ("corrupt_dropped", result.stats.corrupt_dropped),
            ("rejected", result.stats.rejected if result.transport == "udp" else None),
            ("sealed", result.stats.sealed if result.transport == "udp" else None),
            ("timeouts", result.stats.timeouts),
            ("srtt_ms", result.stats.srtt_ms),
            ("loss_estimate", result.stats.loss_estimate),
            ("chunk_bytes", result.stats.chunk_bytes),
            ("blksize", result.stats.blksize),
            ("windowsize", result.stats.windowsize),
            ("acks_received", result.stats.acks_received),
        ):
            if value is not None:
                record[key] = round(value, 5) if isinstance(value, float) else value
    return record


def summary(result: TransferResult) -> str | None:
    """One line about the link after a UDP or TFTP transfer (None for TCP)."""
    stats = result.stats
    if stats is None:
        return None
    rate = result.bytes_per_second / 1e6
    head = f"{result.transport}: {result.bytes:,} bytes in {result.seconds:.2f} s ({rate:.1f} MB/s)"
    if result.transport == "tftp":
        return (
            f"{head}, blksize {stats.blksize}, windowsize {stats.windowsize}, "
            f"{stats.datagrams_sent:,} datagrams sent, {stats.datagrams_received:,} received, "
            f"{stats.retransmitted:,} retransmitted, {stats.duplicates:,} duplicates, "
            f"{stats.timeouts:,} timeouts"
        )
    srtt = "n/a" if stats.srtt_ms is None else f"{stats.srtt_ms:.1f} ms"
    loss = stats.loss_estimate or 0.0
    if stats.acks_received is not None:  # this side sent the data
        traffic = (
            f"{stats.datagrams_sent:,} data datagrams sent, {stats.retransmitted:,} "
            f"retransmitted, {stats.acks_received:,} acks received"
        )
    else:
        traffic = (
            f"{stats.datagrams_received:,} data datagrams received, {stats.duplicates:,} duplicates"
        )
    sealing = (
        f"sealed, {stats.rejected:,} rejected (failed authentication or replayed)"
        if stats.sealed
        else "plaintext (--insecure)"
    )
    return (
        f"{head}, {traffic}, {stats.corrupt_dropped:,} corrupt dropped, {sealing}, "
        f"srtt {srtt}, loss estimate {loss:.1%}"
    )


def entry_record(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "type": entry.kind.name.lower(),
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "mode": f"{entry.mode:04o}",
    }


def _mode_string(entry: Entry) -> str:
    return _KIND_LETTER[entry.kind] + stat_module.filemode(entry.mode)[1:]


def print_listing(entries: list[Entry], *, as_json: bool, out: TextIO = sys.stdout) -> None:
    for entry in sorted(entries, key=lambda e: e.name):
        if as_json:
            print_record(entry_record(entry), out)
            continue
        suffix = "/" if entry.kind is EntryKind.DIRECTORY else ""
        when = format_time(entry.mtime_ns)
        out.write(f"{_mode_string(entry)} {entry.size:>14} {when} {escape(entry.name)}{suffix}\n")


def print_stat(name: str, found: Stat, *, as_json: bool, out: TextIO = sys.stdout) -> None:
    record = entry_record(found.entry)
    record["name"] = name
    record["mtime"] = format_time(found.mtime_ns)
    record["digest"] = found.digest.hex() if found.digest is not None else None
    record["digest_algorithm"] = DIGEST_ALGORITHM if found.digest is not None else None
    if as_json:
        print_record(record, out)
        return
    for key in ("name", "type", "size", "mode", "mtime", "digest", "digest_algorithm"):
        if record[key] is not None:
            value = escape(record[key]) if isinstance(record[key], str) else record[key]
            out.write(f"{key}: {value}\n")
