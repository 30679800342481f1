"""Command line: parses arguments, calls the client or server API, prints results.

The only importer of tqdm. Expected failures become one line on stderr,
``ftransfer: error: ...``, and the exit code of the error class (errors.ExitCode).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, cli_tftp, cli_udp
from .argtypes import port, positive, ranged, size_bytes
from .argtypes import remote as remote_arg
from .client import Client, Remote, get_target, put_targets
from .config import DEFAULT_PORT, MAX_CONNECTIONS_LIMIT, ClientConfig, ServerConfig
from .errors import ExitCode, FtransferError, UsageError
from .output import print_listing, print_record, print_stat, transfer_record
from .proto.udp.packets import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from .storage import escape


class _Bars:
    """tqdm bars on stderr: one per file, plus an overall one for many files.

    tqdm is imported only when bars are drawn (stderr is a terminal): scripts and
    pipelines do not pay for it.
    """

    def __init__(self, files: int, total_bytes: int | None, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None
        self._overall: Any = None
        if enabled and files > 1:
            self._overall = self._new(f"{files} files", total_bytes, leave=True)

    @staticmethod
    def _new(name: str, total: int | None, *, leave: bool) -> Any:
        from tqdm import tqdm

        # A tty may report a 0 x 0 size (serial consoles, fresh ptys), with which tqdm
        # draws nothing; get_terminal_size falls back to 80 x 24.
        size = shutil.get_terminal_size()
        return tqdm(
            total=total,
            desc=name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=leave,
            file=sys.stderr,
            ncols=size.columns,
            nrows=size.lines,
        )

    def file_started(self, name: str, size: int | None) -> None:
        if self._enabled:
            self._bar = self._new(escape(name), size, leave=self._overall is None)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)
        if self._overall is not None:
            self._overall.update(nbytes)

    def file_done(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.file_done()
        if self._overall is not None:
            self._overall.close()


def _error(exc: FtransferError) -> int:
    sys.stderr.write(f"ftransfer: error: {exc}\n")
    return int(exc.exit_code)


def _client_config(args: argparse.Namespace) -> ClientConfig:
    return ClientConfig(connect_timeout_s=args.timeout, idle_timeout_s=args.timeout)


async def _with_client(
    args: argparse.Namespace, remote: Remote, job: Callable[[Client], Awaitable[int]]
) -> int:
    client = await Client.connect(remote.host, remote.port, _client_config(args))
    try:
        return await job(client)
    finally:
        await client.close()


def _bars(args: argparse.Namespace, files: int, total: int | None) -> _Bars:
    return _Bars(files, total, enabled=not args.quiet and sys.stderr.isatty())


async def _with_bars(
    args: argparse.Namespace, files: int, job: Callable[[_Bars], Awaitable[int]]
) -> int:
    bars = _bars(args, files, None)
    try:
        return await job(bars)
    finally:
        bars.close()


async def _put(args: argparse.Namespace) -> int:
    if cli_tftp.is_tftp(args.paths[-1]):
        return await _with_bars(args, len(args.paths) - 1, lambda bars: cli_tftp.put(args, bars))
    remote = remote_arg(args.paths[-1])
    sources = [Path(p) for p in args.paths[:-1]]
    if args.udp:
        return await _with_bars(
            args, len(sources), lambda bars: cli_udp.put(args, remote, sources, bars)
        )

    async def job(client: Client) -> int:
        items = await put_targets(client.stat, sources, remote.path)
        total = sum(p.stat().st_size for p, _r in items if p.is_file())
        bars = _bars(args, len(items), total)
        try:
            outcomes = await client.put_files(items, exclusive=args.no_clobber, progress=bars)
        finally:
            bars.close()
        status = 0
        for outcome in outcomes:
            if isinstance(outcome, FtransferError):
                status = status or _error(outcome)
            elif args.json:
                print_record(transfer_record(outcome), sys.stdout)
        return status

    return await _with_client(args, remote, job)


async def _get(args: argparse.Namespace) -> int:
    if cli_tftp.is_tftp(args.remote):
        return await _with_bars(args, 1, lambda bars: cli_tftp.get(args, bars))
    remote = remote_arg(args.remote)
    if not remote.path:
        raise UsageError("get needs a remote file path: HOST[:PORT]/PATH")
    target = get_target(remote.path, args.local)
    if args.udp:
        return await _with_bars(args, 1, lambda bars: cli_udp.get(args, remote, bars))

    async def job(client: Client) -> int:
        bars = _bars(args, 1, None)
        try:
            destination: Path | int = target if target is not None else sys.stdout.fileno()
            result = await client.get_file(remote.path, destination, progress=bars)
        finally:
            bars.close()
        if args.json:
            print_record(transfer_record(result), sys.stderr if target is None else sys.stdout)
        return 0

    return await _with_client(args, remote, job)


async def _ls(args: argparse.Namespace) -> int:
    remote = remote_arg(args.remote)
    if args.udp:
        return await cli_udp.ls(args, remote)

    async def job(client: Client) -> int:
        print_listing(await client.list_dir(remote.path), as_json=args.json, out=sys.stdout)
        return 0

    return await _with_client(args, remote, job)


async def _stat(args: argparse.Namespace) -> int:
    remote = remote_arg(args.remote)
    if args.udp:
        return await cli_udp.stat(args, remote)

    async def job(client: Client) -> int:
        entry, digest = await client.stat(remote.path)
        print_stat(remote.path, entry, digest, as_json=args.json, out=sys.stdout)
        return 0

    return await _with_client(args, remote, job)


def _simple(
    action: Callable[[Client, Remote, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def run(args: argparse.Namespace) -> int:
        remote = remote_arg(args.remote)
        if not remote.path:
            raise UsageError("a remote path is required: HOST[:PORT]/PATH")
        if getattr(args, "udp", False):
            return await cli_udp.rm(args, remote)

        async def job(client: Client) -> int:
            await action(client, remote, args)
            return 0

        return await _with_client(args, remote, job)

    return run


async def _rm(client: Client, remote: Remote, args: argparse.Namespace) -> None:
    await client.remove(remote.path)


async def _mkdir(client: Client, remote: Remote, args: argparse.Namespace) -> None:
    await client.mkdir(remote.path, parents=args.parents)


async def _mv(client: Client, remote: Remote, args: argparse.Namespace) -> None:
    await client.move(remote.path, args.newpath.lstrip("/"))


async def _serve(args: argparse.Namespace) -> int:
    config = ServerConfig(
        root=Path(args.root),
        host=args.host,
        port=args.port,
        read_only=args.read_only,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_per_address,
        idle_timeout_s=args.idle_timeout,
        hello_timeout_s=args.hello_timeout,
        max_file_bytes=args.max_file_size,
        fsync=not args.no_fsync,
        udp=not args.no_udp,
        udp_port=args.udp_port,
        udp_give_up_s=args.udp_give_up,
        **cli_tftp.server_config(args),
    )
    if not config.root.is_dir():
        raise UsageError(f"--root {args.root}: not a directory")
    from .server import Server  # only `serve` needs it

    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mode = " (read-only)" if config.read_only else ""
    print(f"ftransfer: serving {server.storage.root}{mode} on {' '.join(server.urls)}", flush=True)
    await stop.wait()
    await server.close()
    logging.getLogger("ftransfer.server").info("stopped")
    return 0


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a directory")
    p.add_argument("--root", default=".", help="directory to serve (default: current)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (:: for all)")
    p.add_argument("--port", type=port, default=DEFAULT_PORT, help="TCP port; 0 picks a free one")
    p.add_argument("--read-only", action="store_true", help="refuse every change")
    defaults = ServerConfig()
    p.add_argument(
        "--max-connections",
        type=ranged(1, MAX_CONNECTIONS_LIMIT),
        default=defaults.max_connections,
        metavar="N",
        help=f"connections at once (default {defaults.max_connections})",
    )
    p.add_argument(
        "--max-per-address",
        type=ranged(1, MAX_CONNECTIONS_LIMIT),
        default=defaults.max_connections_per_address,
        metavar="N",
        help="connections at once from one address "
        f"(default {defaults.max_connections_per_address})",
    )
    p.add_argument(
        "--idle-timeout",
        type=positive,
        default=defaults.idle_timeout_s,
        metavar="S",
        help=f"close a silent connection (default {defaults.idle_timeout_s:g} s)",
    )
    p.add_argument(
        "--hello-timeout",
        type=positive,
        default=defaults.hello_timeout_s,
        metavar="S",
        help=f"deadline for the opening HELLO (default {defaults.hello_timeout_s:g} s)",
    )
    p.add_argument(
        "--max-file-size",
        type=size_bytes,
        default=defaults.max_file_bytes,
        metavar="BYTES",
        help="largest upload, e.g. 10G (default 1T)",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="skip fsync before commit (faster; a crash may lose recent uploads)",
    )
    p.add_argument(
        "--udp-port",
        type=port,
        default=None,
        metavar="N",
        help="UDP port (default: the TCP port's number)",
    )
    p.add_argument("--no-udp", action="store_true", help="serve TCP only")
    p.add_argument(
        "--udp-give-up",
        type=positive,
        default=defaults.udp_give_up_s,
        metavar="S",
        help="abandon a UDP session after this long without progress",
    )
    cli_tftp.add_serve_options(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=_serve)


def _udp_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--udp", action="store_true", help="use the UDP protocol (lossy links)")
    p.add_argument(
        "--chunk",
        type=ranged(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES),
        default=DEFAULT_CHUNK_BYTES,
        metavar="BYTES",
        help=f"UDP payload per datagram (default {DEFAULT_CHUNK_BYTES}, safe on a "
        "1500-byte MTU; up to 65000 on loopback)",
    )
    p.add_argument(
        "--give-up",
        type=positive,
        default=30.0,
        metavar="S",
        help="UDP: fail after this long without progress (default 30)",
    )
    p.add_argument(
        "--cc", choices=["bbr", "reno"], default="bbr", help="UDP congestion control (default bbr)"
    )


def _client_options(p: argparse.ArgumentParser, *, transfer: bool = False) -> None:
    p.add_argument(
        "--timeout",
        type=positive,
        default=60.0,
        metavar="S",
        help="give up when the server is silent this long (default 60)",
    )
    p.add_argument("--json", action="store_true", help="print JSON, one object per line")
    if transfer:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftransfer", description="Fast, verified file transfer. REMOTE is HOST[:PORT][/PATH]."
    )
    parser.add_argument("--version", action="version", version=f"ftransfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    p = sub.add_parser("put", help="upload files")
    p.add_argument("paths", nargs="+", metavar="LOCAL... REMOTE")
    p.add_argument("--no-clobber", action="store_true", help="refuse to replace existing files")
    _client_options(p, transfer=True)
    _udp_options(p)
    cli_tftp.add_client_options(p)
    p.set_defaults(run=_put)
    p = sub.add_parser("get", help="download a file (LOCAL '-' is stdout)")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("local", nargs="?", metavar="LOCAL")
    _client_options(p, transfer=True)
    _udp_options(p)
    cli_tftp.add_client_options(p)
    p.set_defaults(run=_get)
    for name, run, text in (("ls", _ls, "list a directory"), ("stat", _stat, "size, mtime, xxh3")):
        p = sub.add_parser(name, help=text)
        p.add_argument("remote", metavar="REMOTE")
        _client_options(p)
        _udp_options(p)
        p.set_defaults(run=run)
    for name, action, text in (
        ("rm", _rm, "remove a file or empty directory"),
        ("mkdir", _mkdir, "create a directory"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("remote", metavar="REMOTE")
        if name == "mkdir":
            p.add_argument("-p", "--parents", action="store_true", help="create parents too")
        else:
            _udp_options(p)
        _client_options(p)
        p.set_defaults(run=_simple(action))
    p = sub.add_parser("mv", help="rename on the server")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("newpath", metavar="NEWPATH")
    _client_options(p)
    p.set_defaults(run=_simple(_mv))
    cli_udp.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(
            level=args.log_level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    if args.command == "put" and len(args.paths) < 2:
        parser.error("put needs LOCAL... REMOTE")
    try:
        status: int = asyncio.run(args.run(args))
        return status
    except UsageError as exc:
        parser.error(str(exc))
    except FtransferError as exc:
        return _error(exc)
    except KeyboardInterrupt:
        sys.stderr.write("ftransfer: interrupted\n")
        return 130
    except BrokenPipeError:
        return int(ExitCode.FAILURE)
    return int(ExitCode.FAILURE)  # unreachable: parser.error exits


if __name__ == "__main__":
    raise SystemExit(main())
