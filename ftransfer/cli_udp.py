"""The CLI's UDP commands (``--udp`` on put/get/ls/stat/rm, and ``ping``): parse, call, print."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .argtypes import non_negative, positive, probability, ranged
from .argtypes import remote as remote_arg
from .client import Remote, get_target, put_targets
from .errors import ConnectionFailed, ExitCode, FtransferError
from .output import print_listing, print_record, print_stat, transfer_record
from .proto.tcp import events as ev
from .proto.tcp.frames import FrameType, decode_untrusted
from .proto.udp.packets import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    Operation,
    PacketError,
    Ping,
    Pong,
    encode,
)
from .proto.udp.packets import decode_untrusted as decode_dg
from .udp_client import UdpOptions, UdpOutcome, UdpStats, as_transfer_result, udp_request


def add_parsers(sub: Any) -> None:
    """The UDP-only commands: relay and ping."""
    p = sub.add_parser("relay", help="a UDP relay that impairs traffic (rehearse a bad link)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="port 0 picks one")
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    for name, text in (
        ("loss", "drop"),
        ("dup", "duplicate"),
        ("reorder", "hold back"),
        ("corrupt", "flip one bit of"),
    ):
        p.add_argument(
            f"--{name}",
            type=probability,
            default=0.0,
            metavar="P",
            help=f"probability to {text} a datagram",
        )
    p.add_argument("--delay", type=non_negative, default=0.0, metavar="MS", help="one-way delay")
    p.add_argument(
        "--jitter", type=non_negative, default=0.0, metavar="MS", help="extra random delay"
    )
    p.add_argument(
        "--rate",
        type=positive,
        default=None,
        metavar="MBIT",
        help="bottleneck rate, with a 50 ms drop-tail queue",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.set_defaults(run=relay)
    p = sub.add_parser("ping", help="UDP echoes: RTT min/avg/max/jitter and loss")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("--udp", action="store_true", help="(the default and only mode)")
    p.add_argument("-c", "--count", type=ranged(1, 1_000_000), default=5, metavar="N")
    p.add_argument("-i", "--interval", type=positive, default=0.2, metavar="S")
    p.add_argument(
        "--timeout",
        type=positive,
        default=1.0,
        metavar="S",
        help="wait this long for each echo (default 1)",
    )
    p.set_defaults(run=lambda args: ping(args, remote_arg(args.remote)))


async def relay(args: argparse.Namespace) -> int:
    """Run the impairment relay until SIGINT/SIGTERM."""
    from .relay import Impairment, Relay
    from .server import format_url

    listen = remote_arg(args.listen, allow_port_zero=True)
    to = remote_arg(args.to)
    impairment = Impairment(
        loss=args.loss,
        dup=args.dup,
        reorder=args.reorder,
        corrupt=args.corrupt,
        delay_s=args.delay / 1000,
        jitter_s=args.jitter / 1000,
        rate_bytes_per_s=None if args.rate is None else args.rate * 1e6 / 8,
    )
    running = Relay((listen.host, listen.port), (to.host, to.port), impairment, args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"ftransfer: relaying {format_url('udp', running.address)} -> udp://{to.host}:{to.port}",
        flush=True,
    )
    await stop.wait()
    running.close()
    return 0


def options(args: argparse.Namespace) -> UdpOptions:
    chunk = max(MIN_CHUNK_BYTES, min(args.chunk, MAX_CHUNK_BYTES))
    return UdpOptions(chunk_bytes=chunk, give_up_s=args.give_up, cc=args.cc)


def summary(stats: UdpStats) -> str:
    srtt = "n/a" if stats.srtt_ms is None else f"{stats.srtt_ms:.1f} ms"
    return (
        f"udp: {stats.bytes:,} bytes in {stats.seconds:.2f} s ({stats.goodput / 1e6:.1f} MB/s), "
        f"{stats.datagrams_sent:,} data datagrams sent, {stats.datagrams_received:,} received, "
        f"{stats.retransmitted:,} retransmitted, "
        f"{stats.duplicates:,} duplicates and {stats.corrupt:,} corrupt dropped, srtt {srtt}, "
        f"loss estimate {stats.loss_estimate:.1%}"
    )


def stats_record(stats: UdpStats) -> dict[str, Any]:
    return {
        "goodput_bytes_per_second": round(stats.goodput),
        "datagrams_sent": stats.datagrams_sent,
        "datagrams_received": stats.datagrams_received,
        "retransmitted": stats.retransmitted,
        "duplicates": stats.duplicates,
        "corrupt_dropped": stats.corrupt,
        "srtt_ms": None if stats.srtt_ms is None else round(stats.srtt_ms, 3),
        "loss_estimate": round(stats.loss_estimate, 5),
    }


def _report(args: argparse.Namespace, outcome: UdpOutcome, remote: str, local: str) -> None:
    if args.json:
        record = transfer_record(as_transfer_result(outcome, remote, local))
        record.update(stats_record(outcome.stats))
        print_record(record, sys.stdout if local != "-" else sys.stderr)
    elif not args.quiet:
        sys.stderr.write(summary(outcome.stats) + "\n")


async def _stat_entry(remote: Remote, path: str, opts: UdpOptions) -> tuple[ev.Entry, bytes]:
    outcome = await udp_request(remote.host, remote.port, Operation.STAT, path, options=opts)
    event = decode_untrusted(FrameType.STAT_OK, outcome.data)
    assert isinstance(event, ev.Stated)
    return event.entry, event.digest


async def put(args: argparse.Namespace, remote: Remote, sources: list[Path], bars: Any) -> int:
    opts = options(args)
    items = await put_targets(lambda path: _stat_entry(remote, path, opts), sources, remote.path)
    status = 0
    for source, target in items:
        try:
            outcome = await udp_request(
                remote.host,
                remote.port,
                Operation.PUT,
                target,
                options=opts,
                local=source,
                progress=bars,
            )
        except FtransferError as exc:
            sys.stderr.write(f"ftransfer: error: {exc}\n")
            status = status or int(exc.exit_code)
            continue
        _report(args, outcome, target, str(source))
    return status


async def get(args: argparse.Namespace, remote: Remote, bars: Any) -> int:
    target = get_target(remote.path, args.local)
    outcome = await udp_request(
        remote.host,
        remote.port,
        Operation.GET,
        remote.path,
        options=options(args),
        target=target if target is not None else sys.stdout.fileno(),
        progress=bars,
    )
    _report(args, outcome, remote.path, "-" if target is None else str(target))
    return 0


async def ls(args: argparse.Namespace, remote: Remote) -> int:
    outcome = await udp_request(
        remote.host, remote.port, Operation.LIST, remote.path, options=options(args)
    )
    event = decode_untrusted(FrameType.ENTRIES, outcome.data)
    assert isinstance(event, ev.Listed)
    print_listing(list(event.entries), as_json=args.json, out=sys.stdout)
    return 0


async def stat(args: argparse.Namespace, remote: Remote) -> int:
    entry, digest = await _stat_entry(remote, remote.path, options(args))
    print_stat(remote.path, entry, digest, as_json=args.json, out=sys.stdout)
    return 0


async def rm(args: argparse.Namespace, remote: Remote) -> int:
    await udp_request(
        remote.host, remote.port, Operation.REMOVE, remote.path, options=options(args)
    )
    return 0


# ---- ping ------------------------------------------------------------------------------

PING_PADDING = 48
"""Bytes of padding in a PING (the PONG is the same size: no amplification)."""


async def ping(args: argparse.Namespace, remote: Remote) -> int:
    """Timestamped echoes; prints RTT min/avg/max/jitter and loss."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(remote.host, remote.port, type=socket.SOCK_DGRAM)
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    rtts: list[float] = []
    try:
        await loop.sock_connect(sock, address)
        for seq in range(args.count):
            rtt = await _one_ping(sock, seq, args.timeout)
            _print_ping(remote, seq, rtt)
            if rtt is not None:
                rtts.append(rtt)
            if seq + 1 < args.count:
                await asyncio.sleep(args.interval)
    except OSError as exc:
        raise ConnectionFailed(f"ping {remote.host}:{remote.port}: {exc.strerror}") from None
    finally:
        sock.close()
    _print_ping_summary(remote, args.count, rtts)
    return 0 if rtts else int(ExitCode.TIMEOUT)


async def _one_ping(sock: socket.socket, seq: int, timeout: float) -> float | None:
    loop = asyncio.get_running_loop()
    sent_ns = time.monotonic_ns()
    await loop.sock_sendall(
        sock, encode(0, Ping(seq=seq, timestamp_ns=sent_ns, padding=PING_PADDING))
    )
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), remaining)
        except TimeoutError:
            return None
        try:
            body = decode_dg(data).body
        except PacketError:
            continue
        if isinstance(body, Pong) and body.seq == seq and body.timestamp_ns == sent_ns:
            return (time.monotonic_ns() - sent_ns) / 1e6
    return None


def _print_ping(remote: Remote, seq: int, rtt: float | None) -> None:
    where = f"{remote.host}:{remote.port}"
    if rtt is None:
        print(f"{where}: seq={seq} timeout", flush=True)
    else:
        print(f"{where}: seq={seq} rtt={rtt:.3f} ms", flush=True)


def _print_ping_summary(remote: Remote, count: int, rtts: list[float]) -> None:
    lost = count - len(rtts)
    print(f"--- {remote.host}:{remote.port} ping statistics ---")
    print(f"{count} sent, {len(rtts)} received, {lost / count:.1%} loss")
    if rtts:
        jitter = (
            statistics.mean(abs(a - b) for a, b in itertools.pairwise(rtts))
            if len(rtts) > 1
            else 0.0
        )
        print(
            f"rtt min/avg/max/jitter = {min(rtts):.3f}/{statistics.mean(rtts):.3f}/"
            f"{max(rtts):.3f}/{jitter:.3f} ms"
        )
