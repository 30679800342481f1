"""The client commands: put, get, ls, stat, rm, mkdir, mv. Parse, call, print.

Each command turns its REMOTE and options into a ``Client`` (which transport, which
settings) and one call, then prints what came back: a line per failure, the
``--json`` records, the link summary of a UDP or TFTP transfer. Nothing here knows
a protocol: the transports are the client's business.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..client import Client, ClientConfig, TransferResult, Url
from ..client.tree import has_magic
from ..errors import FtransferError, UsageError
from .argtypes import remote as parse_remote
from .config_file import aliased
from .output import print_listing, print_stat, record_line, summary, transfer_record
from .progress import Bars


def report_error(exc: FtransferError) -> int:
    """One line on stderr; the exit code of the error."""
    sys.stderr.write(f"ftransfer: error: {exc}\n")
    return int(exc.exit_code)


def _url(args: argparse.Namespace, text: str) -> Url:
    url = parse_remote(aliased(text, getattr(args, "config", None)))
    transport = getattr(args, "transport", None)
    if transport is not None and transport != "tcp":
        if url.scheme == "tftp":
            raise UsageError(f"--transport {transport} does not apply to tftp://")
        url = Url(scheme=transport, host=url.host, port=url.port, path=url.path, user=url.user)
    if getattr(args, "udp", False):
        if url.scheme == "tftp":
            raise UsageError("--udp does not apply to tftp:// (TFTP is always UDP)")
        url = Url(scheme="udp", host=url.host, port=url.port, path=url.path, user=url.user)
    tftp_only = [f for f in ("blksize", "windowsize") if getattr(args, f, None) is not None]
    if getattr(args, "netascii", False):
        tftp_only.append("netascii")
    if tftp_only and url.scheme != "tftp":
        flags = ", ".join(f"--{flag}" for flag in tftp_only)
        raise UsageError(f"{flags}: only for tftp:// (this is {url.scheme}://)")
    return url


def _config(args: argparse.Namespace) -> ClientConfig:
    defaults = ClientConfig()
    give_up = args.give_up
    return ClientConfig(
        connect_timeout_s=min(args.timeout, defaults.connect_timeout_s),
        idle_timeout_s=args.timeout,
        udp_chunk_bytes=args.chunk or defaults.udp_chunk_bytes,
        udp_give_up_s=give_up or defaults.udp_give_up_s,
        udp_cc=args.cc or defaults.udp_cc,
        tftp_blksize=getattr(args, "blksize", None) or defaults.tftp_blksize,
        tftp_windowsize=getattr(args, "windowsize", None) or defaults.tftp_windowsize,
        tftp_netascii=getattr(args, "netascii", False),
        tftp_give_up_s=min(give_up or defaults.tftp_give_up_s, args.timeout),
        insecure=args.insecure,
        tcp_port=args.tcp_port,
        known_hosts=args.known_hosts,
        strict_host_keys=args.strict_host_keys,
        fingerprint=args.fingerprint,
        ca_file=args.ca,
        limit_rate=getattr(args, "limit_rate", None),
        resume=not getattr(args, "no_resume", False),
    )


def _client(args: argparse.Namespace, url: Url) -> Client:
    args.client = None  # (set below: _report reads what auto:// chose)
    if args.verbose:
        from ..client import trace

        trace.enable(trace.to_stderr)
    server = Url(scheme=url.scheme, host=url.host, port=url.port, user=url.user)
    client = Client(server, config=_config(args), password=_password(args, url))
    args.client = client
    return client


def _password(args: argparse.Namespace, url: Url) -> str | None:
    """For user@host: --password-file, else $FTRANSFER_PASSWORD, else a prompt on
    the terminal (never an argument: the process list shows those to everyone)."""
    if not url.user:
        return None
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as file:
                return file.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"--password-file {args.password_file}: {exc.strerror}") from None
    password = os.environ.get("FTRANSFER_PASSWORD")
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise UsageError(
            f"{url.user}@{url.host}: no password: use --password-file or FTRANSFER_PASSWORD"
        )
    import getpass

    return getpass.getpass(f"{url.user}@{url.host}'s password: ")


def _bars(
    args: argparse.Namespace,
    files: int,
    total: int | None,
    on_outcome: Callable[[TransferResult | FtransferError], None] | None = None,
) -> Bars:
    enabled = not args.quiet and sys.stderr.isatty()
    return Bars(files, total, enabled=enabled, on_outcome=on_outcome)


def _report(args: argparse.Namespace, result: TransferResult, bars: Bars) -> None:
    """A transfer's --json record or link summary, above any progress bars."""
    if args.json:
        out = sys.stdout if result.local != "-" else sys.stderr
        record = transfer_record(result)
        client = getattr(args, "client", None)
        if client is not None and client.choice is not None:
            record["transport_choice"] = client.choice.record()
        bars.write(record_line(record), out)
    elif not args.quiet and (line := summary(result)) is not None:
        bars.write(line)


def _local_total(paths: list[str]) -> int | None:
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except OSError:
            continue  # the upload reports the error
    return total


def _batch_bars(
    args: argparse.Namespace,
    failures: list[FtransferError],
    files: int,
    sources: list[str] | None,
) -> Bars:
    """Bars for a batch, told each file's outcome as soon as it is known: a line
    for every failure (kept, for the exit code of the first), a record or summary
    for the others, all above the bars. ``sources``: local files whose sizes make
    the total (else the transfer tells it, once planned)."""

    def report(outcome: TransferResult | FtransferError) -> None:
        if isinstance(outcome, FtransferError):
            failures.append(outcome)
            bars.write(f"ftransfer: error: {outcome}")
        else:
            _report(args, outcome, bars)

    total = None if sources is None else _local_total(sources)
    bars = _bars(args, files, total, on_outcome=report)
    bars.quiet = args.quiet
    return bars


def run_batch(
    args: argparse.Namespace,
    run: Callable[[Bars], object],
    *,
    files: int = 0,
    sources: list[str] | None = None,
) -> FtransferError | None:
    """A many-file call with the bars and the lines of ``_batch_bars``; its first
    failure (a line was printed for each)."""
    failures: list[FtransferError] = []
    bars = _batch_bars(args, failures, files, sources)
    try:
        run(bars)
    finally:
        bars.close()
    return failures[0] if failures else None


def put(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise UsageError("put needs LOCAL... REMOTE")
    url = _url(args, args.paths[-1])
    sources = list(args.paths[:-1])
    with _client(args, url) as client:
        failure = run_batch(
            args,
            lambda bars: client.put_many(
                sources,
                url.path,
                recursive=args.recursive,
                no_clobber=args.no_clobber,
                progress=bars,
                skip=args.skip,
            ),
            files=len(sources),
            sources=None if args.recursive else sources,
        )
    return int(failure.exit_code) if failure else 0  # the first failure's code


def get(args: argparse.Namespace) -> int:
    remotes, local = _get_operands(args)
    url = remotes[0]
    single = len(remotes) == 1 and not has_magic(url.path)
    if single and ((not args.recursive and args.skip is None) or local == "-"):
        return _get_one(args, url, local)
    with _client(args, url) as client:
        failure = run_batch(
            args,
            lambda bars: client.get_many(
                [remote.path for remote in remotes],
                local,
                recursive=args.recursive,
                no_clobber=args.no_clobber,
                progress=bars,
                skip=args.skip,
            ),
        )
    return int(failure.exit_code) if failure else 0


def _get_operands(args: argparse.Namespace) -> tuple[list[Url], str | None]:
    """get's REMOTE... [LOCAL]: one operand is a REMOTE; more, and the last is LOCAL
    (scp's grammar). Every REMOTE names the same server."""
    texts = list(args.paths)
    local = texts.pop() if len(texts) > 1 else None
    remotes = [_url(args, text) for text in texts]
    first = remotes[0]
    for remote in remotes:
        if (remote.scheme, remote.host, remote.port, remote.user) != (
            first.scheme,
            first.host,
            first.port,
            first.user,
        ):
            raise UsageError("get: every REMOTE must name the same server")
        if not remote.path:
            raise UsageError("get needs a remote file path: HOST[:PORT]/PATH")
    return remotes, local


def _get_one(args: argparse.Namespace, url: Url, local: str | None) -> int:
    bars = _bars(args, 1, None)
    with _client(args, url) as client:
        try:
            result = client.get(url.path, local, no_clobber=args.no_clobber, progress=bars)
        finally:
            bars.close()
    _report(args, result, bars)
    return 0


def ls(args: argparse.Namespace) -> int:
    url = _url(args, args.remote)
    with _client(args, url) as client:
        print_listing(client.list(url.path), as_json=args.json)
    return 0


def stat(args: argparse.Namespace) -> int:
    url = _url(args, args.remote)
    with _client(args, url) as client:
        print_stat(url.path, client.stat(url.path), as_json=args.json)
    return 0


def _needs_path(url: Url) -> None:
    if not url.path:
        raise UsageError("a remote path is required: HOST[:PORT]/PATH")


def rm(args: argparse.Namespace) -> int:
    url = _url(args, args.remote)
    _needs_path(url)
    with _client(args, url) as client:
        client.remove(url.path)
    return 0


def mkdir(args: argparse.Namespace) -> int:
    url = _url(args, args.remote)
    _needs_path(url)
    with _client(args, url) as client:
        client.mkdir(url.path, parents=args.parents)
    return 0


def mv(args: argparse.Namespace) -> int:
    url = _url(args, args.remote)
    _needs_path(url)
    with _client(args, url) as client:
        client.move(url.path, args.newpath.lstrip("/"), no_clobber=args.no_clobber)
    return 0


COMMANDS = {"put": put, "get": get, "ls": ls, "stat": stat, "rm": rm, "mkdir": mkdir, "mv": mv}
