"""The client's TFTP side: ``get`` and ``put`` to ``tftp://HOST[:PORT]/PATH``.

Theory of operation
-------------------
``TftpCall`` is one request's application around the ``TftpClient`` core
(proto/tftp/client.py), run by the blocking runner (io/threaded.py: lockstep
speed is the round trip, and a thread blocked in recv adds nothing to it) for
``Client``, or the asyncio driver for ``AsyncClient``. The request asks for
``blksize``, ``windowsize`` and ``tsize``; the core takes what the server confirms
and falls back to plain RFC 1350 when it refuses options.

A download is written as on the other transports: to a sink (a temporary file
beside the target, renamed into place only when the transfer ended cleanly and,
when the server announced tsize, the size matched); more bytes than announced end
the transfer. An interrupted transfer (Ctrl-C, SIGTERM, cancellation) stops at
once, commits nothing, and tells the server (ERROR) if it ever answered. TFTP
carries no checksum, so the digest in a result is of the bytes this side sent or
received, marked ``verified=False``: never claim more.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..checksum import new_hasher
from ..config import ClientConfig
from ..errors import ConnectionFailed, FtransferError, error_from_code
from ..io import threaded
from ..io.udp import DatagramSocket, open_reporting_socket, resolve
from ..proto.events import Completed, DataReceived, Failed
from ..proto.tftp import netascii
from ..proto.tftp.client import TftpClient
from ..proto.tftp.packets import DEFAULT_BLKSIZE, ErrorCode, Request
from .local import LocalFile, Sink
from .result import Progress, TransferResult, TransferStats
from .urls import Url


def _request(path: str, config: ClientConfig, *, write: bool, size: int | None) -> Request:
    asked: dict[str, str] = {}
    if config.tftp_blksize != DEFAULT_BLKSIZE:
        asked["blksize"] = str(config.tftp_blksize)
    if config.tftp_windowsize > 1:
        asked["windowsize"] = str(config.tftp_windowsize)
    mode = "netascii" if config.tftp_netascii else "octet"
    if mode == "octet":
        asked["tsize"] = str(size if write and size is not None else 0)
    return Request(write=write, filename=path, mode=mode, options=asked)


class TftpCall:
    """One TFTP request and what becomes of it."""

    def __init__(
        self,
        url: Url,
        config: ClientConfig,
        path: str,
        *,
        now: float,
        source: LocalFile | None = None,
        sink: Sink | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.url, self.path, self.progress = url, path, progress
        self.sink = sink
        self.error: FtransferError | None = None
        self.completed = False
        self._started = time.perf_counter()
        self._hasher = new_hasher()
        self._decoder = netascii.Decoder() if config.tftp_netascii else None
        family, address = resolve(url.host, url.port, passive=False)
        self.family = family
        write = source is not None
        read = self._reader(source, config) if source is not None else None
        size = source.size if source is not None else None
        self.core = TftpClient(
            _request(path, config, write=write, size=size),
            address,
            now=now,
            give_up_s=config.tftp_give_up_s,
            read=read,
        )
        self._announced = False
        if source is not None and progress is not None:
            progress.file_started(path, source.size)
            self._announced = True

    def _reader(self, source: LocalFile, config: ClientConfig) -> Callable[[int], bytes]:
        position = 0

        def read(n: int) -> bytes:
            nonlocal position
            data = source.read(position, min(n, source.size - position))
            position += len(data)
            self._hasher.update(data)
            if self.progress is not None:
                self.progress.advance(len(data))
            return data

        return netascii.encoding_reader(read) if config.tftp_netascii else read

    @property
    def over(self) -> bool:
        return self.completed or self.error is not None

    def unreachable(self) -> None:
        """ICMP port unreachable: fatal only before the server ever answered."""
        if not self.core.heard and self.error is None:
            self.error = ConnectionFailed(
                f"tftp {self.url.address}: port unreachable (no TFTP server there)"
            )

    def on_event(self, event: object) -> None:
        if isinstance(event, DataReceived):
            self._store(event)
        elif isinstance(event, Completed):
            self.completed = True
        elif isinstance(event, Failed) and self.error is None:
            self.error = error_from_code(event.code, f"{self.url.address}: {event.message}")

    def _store(self, event: DataReceived) -> None:
        sink = self.sink
        assert sink is not None
        if not self._announced and self.progress is not None:
            params = self.core.params
            self.progress.file_started(self.path, params.tsize if params else None)
            self._announced = True
        data = bytes(event.data)
        if self._decoder is not None:
            data = self._decoder.feed(data) + (self._decoder.finish() if event.final else b"")
        try:
            sink.write(data)
            if self.progress is not None:
                self.progress.advance(len(data))
            if event.final:
                sink.commit(sink.digest)
                self.core.accept_final(time.monotonic())
        except FtransferError as exc:
            self.error = exc
            self.core.abort(ErrorCode.NOT_DEFINED, str(exc))

    def interrupted(self) -> None:
        if not self.core.finished:
            self.core.abort(ErrorCode.NOT_DEFINED, "interrupted by the client")

    def finish(self) -> None:
        if self.sink is not None:
            self.sink.abort()  # after a commit this only closes
        if self.progress is not None and self._announced:
            self.progress.file_done()

    def outcome(self, local: str) -> TransferResult:
        if self.error is not None:
            raise self.error
        stats, params = self.core.stats, self.core.params
        digest = self.sink.digest if self.sink is not None else self._hasher.digest()
        return TransferResult(
            path=self.path,
            local=local,
            bytes=stats.bytes,
            seconds=time.perf_counter() - self._started,
            digest=digest,
            transport="tftp",
            verified=False,
            stats=TransferStats(
                datagrams_sent=stats.datagrams_sent,
                datagrams_received=stats.datagrams_received,
                retransmitted=stats.retransmitted,
                duplicates=stats.duplicates,
                timeouts=stats.timeouts,
                blksize=params.blksize if params else None,
                windowsize=params.windowsize if params else None,
            ),
        )


def run_sync(call: TftpCall) -> None:
    """Run the transfer on a blocking socket in this thread (``Client``)."""
    sock = open_reporting_socket(call.family)
    try:
        threaded.run(
            sock,
            call.core,
            call.on_event,
            finished=lambda: call.over and call.core.finished,
            on_unreachable=call.unreachable,
            stop=lambda: call.error is not None,
        )
    except BaseException:
        call.interrupted()
        threaded.send_all(DatagramSocket(sock), call.core, time.monotonic())
        raise
    finally:
        call.finish()
        sock.close()


async def run_async(call: TftpCall) -> None:
    """Run the transfer on the asyncio loop (``AsyncClient``)."""
    from .datagram import run_on_loop

    await run_on_loop(call, open_reporting_socket(call.family))
