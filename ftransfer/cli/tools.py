"""``ftransfer ping`` and ``ftransfer relay``: parse, call, print."""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from collections.abc import Callable

from ..client import Url, escape, format_address
from ..client.ping import ping as send_pings
from ..errors import ExitCode, FtransferError, UsageError
from .argtypes import remote as parse_remote
from .config_file import aliased


def ping(args: argparse.Namespace) -> int:
    """Timestamped echoes; prints each RTT, then min/avg/max/jitter and loss."""
    text = aliased(args.remote, getattr(args, "config", None))
    url = parse_remote(text)
    where = format_address(url.host, url.port)

    def report(seq: int, rtt: float | None) -> None:
        shown = "timeout" if rtt is None else f"rtt={rtt:.3f} ms"
        print(f"{where}: seq={seq} {shown}", flush=True)

    over_tcp = getattr(args, "tcp", False) or text.startswith("tcp://")
    if over_tcp:
        rtts = _tcp_pings(args, url, report)
    else:
        rtts = send_pings(
            Url(scheme="udp", host=url.host, port=url.port),
            count=args.count,
            interval_s=args.interval,
            timeout_s=args.timeout,
            report=report,
        )
    lost = args.count - len(rtts)
    print(f"--- {where} ping statistics ---")
    print(f"{args.count} sent, {len(rtts)} received, {lost / args.count:.1%} loss")
    if rtts:
        pairs = list(itertools.pairwise(rtts))
        jitter = statistics.mean(abs(a - b) for a, b in pairs) if pairs else 0.0
        print(
            f"rtt min/avg/max/jitter = {min(rtts):.3f}/{statistics.mean(rtts):.3f}/"
            f"{max(rtts):.3f}/{jitter:.3f} ms"
        )
    return 0 if rtts else int(ExitCode.TIMEOUT)


def _tcp_pings(
    args: argparse.Namespace, url: Url, report: Callable[[int, float | None], None]
) -> list[float]:
    """The echoes over one TCP (TLS) connection; a lost connection ends them."""
    import time

    from ..client import Client, ClientConfig
    from .commands import _password

    config = ClientConfig(
        connect_timeout_s=max(args.timeout, 1.0),
        idle_timeout_s=max(args.timeout * 10, 10.0),
        insecure=getattr(args, "insecure", False),
        tcp_port=None,
        known_hosts=getattr(args, "known_hosts", None),
        strict_host_keys=getattr(args, "strict_host_keys", False),
        fingerprint=getattr(args, "fingerprint", None),
        ca_file=getattr(args, "ca", None),
    )
    server = Url(scheme="tcp", host=url.host, port=url.port, user=url.user)
    rtts: list[float] = []
    with Client(server, config=config, password=_password(args, url)) as client:
        client.ping(-1 & 0xFFFFFFFF)  # the connection, its handshakes (not counted)
        for seq in range(args.count):
            if seq:
                time.sleep(args.interval)
            rtt = client.ping(seq)
            rtts.append(rtt)
            report(seq, rtt)
    return rtts


def relay(args: argparse.Namespace) -> int:
    """Run the impairment relay until SIGINT/SIGTERM."""
    from ..tools.relay import run

    listen = parse_remote(args.listen, allow_port_zero=True)
    to = parse_remote(args.to)
    there = format_address(to.host, to.port)

    def ready(address: tuple[str, int]) -> None:
        here = format_address(*address)
        print(f"ftransfer: relaying udp://{here} -> udp://{there}", flush=True)

    run(
        (listen.host, listen.port),
        (to.host, to.port),
        seed=args.seed,
        ready=ready,
        loss=args.loss,
        dup=args.dup,
        reorder=args.reorder,
        corrupt=args.corrupt,
        delay_s=args.delay / 1000,
        jitter_s=args.jitter / 1000,
        rate_bytes_per_s=None if args.rate is None else args.rate * 1e6 / 8,
    )
    return 0


def print_sums(paths: list[str]) -> int:
    """Print ``DIGEST  NAME`` for each local file (as sha256sum does), the same
    xxh3-128 the server's stat and --json show; the exit code of the first
    file that could not be read."""
    from ..checksum import file_digest
    from ..client.local import LocalFile

    failed = 0
    for path in paths:
        try:
            with LocalFile(path) as source:
                digest = file_digest(source.fileno())
        except FtransferError as exc:
            sys.stderr.write(f"ftransfer: error: {exc}\n")
            failed = failed or int(exc.exit_code)
            continue
        except OSError as exc:
            sys.stderr.write(f"ftransfer: error: local {path}: {exc.strerror}\n")
            failed = failed or int(ExitCode.LOCAL_IO)
            continue
        print(f"{digest.hex()}  {escape(path)}")
    return failed


def sum_files(args: argparse.Namespace) -> int:
    return print_sums(list(args.files))


def shell(args: argparse.Namespace) -> int:
    """An interactive session (cli/shell.py) on one connection."""
    from .commands import _client, _url
    from .shell import run

    url = _url(args, args.remote)
    if url.path:
        raise UsageError("shell takes a server, [USER@]HOST[:PORT]; cd to a directory inside")
    with _client(args, url) as client:
        return run(args, client)
