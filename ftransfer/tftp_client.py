"""The client's TFTP side: ``get``/``put`` with ``tftp://HOST[:PORT]/PATH``.

Theory of operation
-------------------
One request per call, run by ``io.threaded`` on a socket of its own in the calling
thread (see that module for why TFTP runs on blocking sockets). The request asks
for ``blksize``, ``windowsize`` and ``tsize``; ``proto.tftp.TftpClient`` takes what
the server confirms and falls back to plain RFC 1350 when it refuses options.

A download is written as on the other protocols: to a temporary file beside the
target, renamed into place only when the transfer ended cleanly and, when the server
announced tsize, the size matched; more bytes than announced end the transfer.
TFTP carries no checksum, so the xxh3-128 in ``--json`` is of the bytes received,
not a verification against the server's file: say so, and never claim more.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checksum import new_hasher
from .client import Progress, Sink, StdoutSink, TransferResult, open_local_file, parse_remote
from .errors import ConnectionFailed, FtransferError, UsageError
from .io import threaded
from .proto.tftp import netascii
from .proto.tftp.packets import DEFAULT_BLKSIZE, ErrorCode, Params, Request
from .proto.tftp.transfer import DataReceived, Event, Failed, Reader, TftpClient, TftpStats
from .storage import open_local_writer, sequential_reader

TFTP_PORT = 69
SCHEME = "tftp://"


@dataclass(frozen=True, kw_only=True)
class TftpOptions:
    blksize: int = 1428
    """Asked for by default: the largest block that fits a 1500-byte MTU over IPv6
    (1428 + 4 + 8 + 40 = 1480), so no path fragments it."""
    windowsize: int = 32
    """RFC 7440; servers without it ignore the option and run lockstep."""
    mode: str = "octet"
    give_up_s: float = 15.0


@dataclass(frozen=True, kw_only=True)
class TftpOutcome:
    result: TransferResult
    stats: TftpStats
    params: Params


@dataclass(frozen=True, slots=True)
class TftpUrl:
    host: str
    port: int
    path: str


def parse_url(text: str) -> TftpUrl:
    """``tftp://HOST[:PORT]/PATH`` (IPv6 hosts in brackets); UsageError if malformed."""
    try:
        remote = parse_remote(text.removeprefix(SCHEME), default_port=TFTP_PORT)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return TftpUrl(remote.host, remote.port, remote.path)


def _connect(host: str, port: int) -> tuple[socket.socket, tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConnectionFailed(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    return sock, (str(address[0]), int(address[1]))


def _request(path: str, options: TftpOptions, *, write: bool, size: int | None) -> Request:
    asked: dict[str, str] = {}
    if options.blksize != DEFAULT_BLKSIZE:
        asked["blksize"] = str(options.blksize)
    if options.windowsize > 1:
        asked["windowsize"] = str(options.windowsize)
    if options.mode == "octet":
        asked["tsize"] = str(size if write and size is not None else 0)
    return Request(write=write, filename=path, mode=options.mode, options=asked)


def _transfer(
    url: TftpUrl,
    request: Request,
    options: TftpOptions,
    *,
    read: Reader | None = None,
    on_data: Callable[[DataReceived, TftpClient], None] | None = None,
) -> TftpClient:
    """Run one request to completion; raises the error that ended it otherwise."""
    sock, server = _connect(url.host, url.port)
    now = time.monotonic()
    client = TftpClient(request, server, now=now, give_up_s=options.give_up_s, read=read)

    def on_event(event: Event) -> None:
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, DataReceived) and on_data is not None:
            on_data(event, client)

    try:
        threaded.run(sock, client, on_event)
    except (FtransferError, KeyboardInterrupt) as exc:
        if not client.finished:
            reason = str(exc) if isinstance(exc, FtransferError) else "interrupted"
            client.abort(ErrorCode.NOT_DEFINED, reason)
            threaded.send_all(sock, client)
        raise
    finally:
        sock.close()
    return client


def tftp_get(
    url: TftpUrl, target: Path | None, options: TftpOptions, progress: Progress | None = None
) -> TftpOutcome:
    """Download ``url`` to ``target`` (None: standard output), atomically for a file."""
    started = time.monotonic()
    sink: Sink = (
        open_local_writer(target, size=None, mtime_ns=-1)
        if target is not None
        else StdoutSink(sys.stdout.fileno())
    )
    decoder = netascii.Decoder() if options.mode == "netascii" else None

    def on_data(event: DataReceived, client: TftpClient) -> None:
        if progress is not None and client.stats.datagrams_received <= 1:
            params = client.params
            progress.file_started(url.path, params.tsize if params else None)
        data = event.payload
        if decoder is not None:
            data = decoder.feed(data) + (decoder.finish() if event.final else b"")
        sink.write(data)
        if progress is not None:
            progress.advance(len(data))
        if event.final:
            sink.commit(sink.digest)
            client.accept_final(time.monotonic())

    request = _request(url.path, options, write=False, size=None)
    try:
        client = _transfer(url, request, options, on_data=on_data)
    except BaseException:
        sink.abort()
        raise
    finally:
        if progress is not None:
            progress.file_done()
    return _outcome(url, "-" if target is None else str(target), client, sink.digest, started)


def tftp_put(
    source: Path, url: TftpUrl, options: TftpOptions, progress: Progress | None = None
) -> TftpOutcome:
    """Upload the local file ``source`` to ``url``."""
    started = time.monotonic()
    fd, st = open_local_file(source)
    hasher = new_hasher()
    local = sequential_reader(fd, st.st_size)

    def read(n: int) -> bytes:
        data = local(n)
        hasher.update(data)
        if progress is not None:
            progress.advance(len(data))
        return data

    reader = netascii.encoding_reader(read) if options.mode == "netascii" else read
    request = _request(url.path, options, write=True, size=st.st_size)
    try:
        if progress is not None:
            progress.file_started(source.name, st.st_size)
        client = _transfer(url, request, options, read=reader)
    finally:
        os.close(fd)
        if progress is not None:
            progress.file_done()
    return _outcome(url, str(source), client, hasher.digest(), started)


def _outcome(
    url: TftpUrl, local: str, client: TftpClient, digest: bytes, started: float
) -> TftpOutcome:
    result = TransferResult(
        remote=url.path,
        local=local,
        size=client.stats.bytes,
        seconds=time.monotonic() - started,
        digest=digest,
    )
    return TftpOutcome(result=result, stats=client.stats, params=client.params or Params())
