"""The CLI's TFTP parts: ``serve --tftp-port`` options, and ``get``/``put`` with a
``tftp://HOST[:PORT]/PATH`` argument. Parses, calls ``tftp_client``, prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .argtypes import port, positive, ranged
from .client import get_target
from .config import ServerConfig
from .errors import FtransferError, UsageError
from .output import print_record, transfer_record
from .proto.tftp.packets import MAX_BLKSIZE, MAX_WINDOWSIZE, MIN_BLKSIZE
from .tftp_client import SCHEME, TftpOptions, TftpOutcome, TftpUrl, parse_url, tftp_get, tftp_put


def is_tftp(text: str) -> bool:
    return text.startswith(SCHEME)


def add_serve_options(p: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    p.add_argument(
        "--tftp-port",
        type=port,
        default=None,
        metavar="N",
        help="also serve standard TFTP on UDP port N (off by default; 0 picks one)",
    )
    p.add_argument(
        "--tftp-max-blksize",
        type=ranged(MIN_BLKSIZE, MAX_BLKSIZE),
        default=defaults.tftp_max_blksize,
        metavar="N",
        help=f"largest TFTP blksize a client may get (default {defaults.tftp_max_blksize})",
    )
    p.add_argument(
        "--tftp-max-window",
        type=ranged(1, MAX_WINDOWSIZE),
        default=defaults.tftp_max_window,
        metavar="N",
        help=f"largest TFTP windowsize a client may get (default {defaults.tftp_max_window})",
    )
    p.add_argument(
        "--tftp-max-sessions",
        type=ranged(1, 4096),
        default=defaults.tftp_max_sessions,
        metavar="N",
        help=f"TFTP transfers at once (default {defaults.tftp_max_sessions}; "
        f"{defaults.tftp_max_sessions_per_address} per address)",
    )
    p.add_argument(
        "--tftp-give-up",
        type=positive,
        default=defaults.tftp_give_up_s,
        metavar="S",
        help="end a TFTP transfer after this long without progress",
    )


def server_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerConfig fields the TFTP options set."""
    return {
        "tftp_port": args.tftp_port,
        "tftp_max_blksize": args.tftp_max_blksize,
        "tftp_max_window": args.tftp_max_window,
        "tftp_max_sessions": args.tftp_max_sessions,
        "tftp_give_up_s": args.tftp_give_up,
    }


def add_client_options(p: argparse.ArgumentParser) -> None:
    defaults = TftpOptions()
    p.add_argument(
        "--blksize",
        type=ranged(MIN_BLKSIZE, MAX_BLKSIZE),
        default=defaults.blksize,
        metavar="N",
        help=f"tftp://: block size to ask for (default {defaults.blksize})",
    )
    p.add_argument(
        "--windowsize",
        type=ranged(1, MAX_WINDOWSIZE),
        default=defaults.windowsize,
        metavar="N",
        help=f"tftp://: blocks per ACK to ask for (default {defaults.windowsize})",
    )
    p.add_argument("--netascii", action="store_true", help="tftp://: text mode (CR LF lines)")


def _options(args: argparse.Namespace) -> TftpOptions:
    return TftpOptions(
        blksize=args.blksize,
        windowsize=args.windowsize,
        mode="netascii" if args.netascii else "octet",
        give_up_s=min(args.timeout, args.give_up),
    )


def summary(outcome: TftpOutcome) -> str:
    r, s, p = outcome.result, outcome.stats, outcome.params
    rate = r.size / max(r.seconds, 1e-9) / 1e6
    return (
        f"tftp: {r.size:,} bytes in {r.seconds:.2f} s ({rate:.1f} MB/s), blksize {p.blksize}, "
        f"windowsize {p.windowsize}, {s.datagrams_sent:,} datagrams sent, "
        f"{s.datagrams_received:,} received, {s.retransmitted:,} retransmitted, "
        f"{s.duplicates:,} duplicates, {s.timeouts:,} timeouts"
    )


def _report(args: argparse.Namespace, outcome: TftpOutcome) -> None:
    if args.json:
        record = transfer_record(outcome.result)
        s, p = outcome.stats, outcome.params
        record.update(
            protocol="tftp",
            blksize=p.blksize,
            windowsize=p.windowsize,
            datagrams_sent=s.datagrams_sent,
            datagrams_received=s.datagrams_received,
            retransmitted=s.retransmitted,
            duplicates=s.duplicates,
            timeouts=s.timeouts,
        )
        print_record(record, sys.stdout if outcome.result.local != "-" else sys.stderr)
    elif not args.quiet:
        sys.stderr.write(summary(outcome) + "\n")


def _check_flags(args: argparse.Namespace) -> None:
    if getattr(args, "udp", False):
        raise UsageError("--udp does not apply to tftp:// (TFTP is always UDP)")


async def get(args: argparse.Namespace, bars: Any) -> int:
    """``get tftp://HOST[:PORT]/PATH [LOCAL]``. Blocking by design (io.threaded):
    nothing else runs in this process, and Ctrl-C reaches the transfer directly."""
    _check_flags(args)
    url = parse_url(args.remote)
    if not url.path:
        raise UsageError("get needs a remote file path: tftp://HOST[:PORT]/PATH")
    target = get_target(url.path, args.local)
    _report(args, tftp_get(url, target, _options(args), bars))
    return 0


async def put(args: argparse.Namespace, bars: Any) -> int:
    """``put LOCAL... tftp://HOST[:PORT]/PATH``: one file to PATH, or several into
    the directory PATH/ (TFTP has no listing to check it against)."""
    _check_flags(args)
    url = parse_url(args.paths[-1])
    sources = [Path(p) for p in args.paths[:-1]]
    into_dir = not url.path or url.path.endswith("/")
    if len(sources) > 1 and not into_dir:
        raise UsageError("several files need a directory: tftp://HOST[:PORT]/DIR/")
    status = 0
    for source in sources:
        target = TftpUrl(url.host, url.port, url.path + source.name if into_dir else url.path)
        try:
            _report(args, tftp_put(source, target, _options(args), bars))
        except FtransferError as exc:
            sys.stderr.write(f"ftransfer: error: {exc}\n")
            status = status or int(exc.exit_code)
    return status
