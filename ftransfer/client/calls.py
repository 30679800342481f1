"""What each client call means, for every transport, written once for both flavours.

Theory of operation
-------------------
Every call of ``Client`` and ``AsyncClient`` is a generator here that decides
everything (where files go, no-clobber, which transport does what, which sink takes
a download) and yields one of three requests to run a transport's logic:

    RunTcp(make)    run ``make(logic)`` on the client's TCP connection (client/tcp.py)
    RunUdp(call)    run one UDP request (client/udp.py)
    RunTftp(call)   run one TFTP request (client/tftp.py)

``Client`` carries them out on blocking sockets, ``AsyncClient`` on the asyncio
loop; their methods are one line each. A transport asked for what it cannot do
raises ``NotSupported`` (TFTP: no listing, STAT, MKDIR, MOVE, REMOVE; UDP: no
MKDIR or MOVE).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence

from .._records import Record
from ..config import ClientConfig
from ..errors import (
    Exists,
    FtransferError,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotSupported,
    UsageError,
)
from ..proto.tcp import events as ev
from ..storage.entry import Entry
from .local import FileSink, LocalFile, MemorySink, Sink, StreamSink, local_label
from .plan import get_target, put_needs_stat, put_targets, remote_basename
from .result import Progress, Stat, TransferResult
from .urls import Url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    from .tcp import Op, TcpLogic
    from .tftp import TftpCall
    from .udp import MakeSink, UdpCall

    T = TypeVar("T")

# UDP operations (proto/udp/packets.Operation), named here so that a TCP command
# does not import the UDP core.
PUT, GET, LIST, STAT, REMOVE = 1, 2, 3, 4, 5

PathLike = str | os.PathLike[str]
STDOUT = "-"
"""``get``'s local name for standard output."""


class RunTcp(Record):
    make: Callable[[TcpLogic], Op[object]]


class RunUdp(Record):
    call: UdpCall


class RunTftp(Record):
    call: TftpCall


Request = RunTcp | RunUdp | RunTftp
Call = Generator[Request, object, "T"]


def _not_supported(url: Url, what: str) -> NotSupported:
    better = "tcp://" if url.scheme == "udp" else "tcp:// or udp://"
    return NotSupported(f"{url.scheme}://{url.address}: cannot {what} (use {better})")


def _tcp(make: Callable[[TcpLogic], Op[object]]) -> Generator[Request, object, object]:
    return (yield RunTcp(make=make))


class Calls:
    """The calls against one server, as generators (see the module docstring)."""

    def __init__(self, url: Url, config: ClientConfig) -> None:
        self.url, self.config = url, config

    def _udp(
        self,
        operation: int,
        path: str,
        *,
        source: LocalFile | None = None,
        make_sink: MakeSink | None = None,
        progress: Progress | None = None,
        exclusive: bool = False,
    ) -> Call[UdpCall]:
        """One UDP request, sealed with a ticket fetched over the TLS connection
        first (one round trip on a connection already open); plaintext only with
        ``--insecure``."""
        from ..proto.udp.packets import Operation
        from .udp import UdpCall

        ticket = None
        if not self.config.insecure:
            from ..proto.udp.sealed import Ticket

            issued = yield from _tcp(lambda logic: logic.ticket())
            assert isinstance(issued, ev.TicketIssued)
            ticket = Ticket(
                ticket=issued.ticket, secret=issued.secret, lifetime_s=issued.lifetime_s
            )
        return UdpCall(
            self.url,
            self.config,
            Operation(operation),
            path,
            now=time.monotonic(),
            source=source,
            make_sink=make_sink,
            progress=progress,
            exclusive=exclusive,
            ticket=ticket,
        )

    def _tftp(
        self,
        path: str,
        *,
        source: LocalFile | None = None,
        sink: Sink | None = None,
        progress: Progress | None,
    ) -> TftpCall:
        from .tftp import TftpCall

        return TftpCall(
            self.url,
            self.config,
            path,
            now=time.monotonic(),
            source=source,
            sink=sink,
            progress=progress,
        )

    def _udp_answer(self, operation: int, path: str) -> Call[bytes]:
        call = yield from self._udp(operation, path, make_sink=lambda accepted: MemorySink())
        yield RunUdp(call=call)
        return call.answer()

    # ---- metadata -------------------------------------------------------------------

    def stat(self, path: str) -> Call[Stat]:
        if self.url.scheme == "tcp":
            result = yield from _tcp(lambda logic: logic.stat(path))
            assert isinstance(result, Stat)
            return result
        if self.url.scheme == "tftp":
            raise _not_supported(self.url, "stat")
        from ..proto.tcp.frames import FrameType, decode_untrusted
        from .tcp import wire_to_entry

        stated = decode_untrusted(FrameType.STAT_OK, (yield from self._udp_answer(STAT, path)))
        assert isinstance(stated, ev.Stated)
        digest = stated.digest if stated.entry.kind is ev.EntryKind.FILE else None
        return Stat(entry=wire_to_entry(stated.entry), digest=digest)

    def listing(self, path: str) -> Call[list[Entry]]:
        if self.url.scheme == "tcp":
            result = yield from _tcp(lambda logic: logic.listing(path))
            assert isinstance(result, list)
            return result
        if self.url.scheme == "tftp":
            raise _not_supported(self.url, "list directories")
        from ..proto.tcp.frames import FrameType, decode_untrusted
        from .tcp import wire_to_entry

        listed = decode_untrusted(FrameType.ENTRIES, (yield from self._udp_answer(LIST, path)))
        assert isinstance(listed, ev.Listed)
        return sorted((wire_to_entry(e) for e in listed.entries), key=lambda e: e.name)

    def remove(self, path: str) -> Call[None]:
        if self.url.scheme == "tcp":
            yield from _tcp(lambda logic: logic.simple(ev.RemoveRequested(path=path)))
        elif self.url.scheme == "tftp":
            raise _not_supported(self.url, "remove")
        else:
            call = yield from self._udp(REMOVE, path)
            yield RunUdp(call=call)
            call.outcome("")

    def mkdir(self, path: str, *, parents: bool) -> Call[None]:
        if self.url.scheme != "tcp":
            raise _not_supported(self.url, "create directories")
        yield from _tcp(lambda logic: logic.simple(ev.MkdirRequested(path=path, parents=parents)))

    def move(self, source: str, target: str, *, no_clobber: bool) -> Call[None]:
        if self.url.scheme != "tcp":
            raise _not_supported(self.url, "move")
        if not target.strip("/"):
            target = yield from self._into_root(source)
        request = ev.MoveRequested(source=source, target=target, exclusive=no_clobber)
        yield from _tcp(lambda logic: logic.simple(request))

    def _into_root(self, source: str) -> Call[str]:
        """The target that moves ``source`` into the root, which no request may
        name: its own name there. A directory of that name would take it in, so
        it is refused as MOVE refuses to replace a directory (from a parent; a
        source already in the root is the server's to judge)."""
        name = remote_basename(source)
        if not name or "/" not in source.strip("/"):
            return name
        try:
            is_dir = (yield from self.stat(name)).is_dir
        except NotFound:
            return name
        if is_dir:
            raise IsADirectory(f"{self.url.address}: {name}: is a directory, not replaced")
        return name

    # ---- downloads ------------------------------------------------------------------

    def get(
        self,
        remote: str,
        local: PathLike | int | None,
        *,
        no_clobber: bool,
        progress: Progress | None,
    ) -> Call[TransferResult]:
        if remote.endswith("/"):
            yield from self._refuse_directory(remote)
        plan = Download(remote, local, no_clobber)
        if self.url.scheme == "tcp":

            def make_sink(header: ev.FileStarted) -> Sink:
                return plan.sink(header.size, header.mtime_ns, header.mode)

            result = yield from _tcp(
                lambda logic: logic.get(remote, make_sink, plan.local, progress)
            )
            assert isinstance(result, TransferResult)
            return result
        if self.url.scheme == "tftp":
            tftp = self._tftp(remote, sink=plan.sink(None, -1, None), progress=progress)
            yield RunTftp(call=tftp)
            return tftp.outcome(plan.local)
        udp = yield from self._udp(
            GET,
            remote,
            make_sink=lambda accepted: plan.sink(accepted.size, accepted.mtime_ns, accepted.mode),
            progress=progress,
        )
        yield RunUdp(call=udp)
        return udp.outcome(plan.local)

    def _refuse_directory(self, remote: str) -> Call[None]:
        """A name ending in '/' names a directory, which get cannot fetch: ask the
        server what it is, for the precise refusal (a file: the server's "not a
        directory"; a missing name: not found). TFTP cannot ask."""
        if self.url.scheme == "tftp":
            raise UsageError(f"{remote}: a name ending in '/' is a directory; get fetches a file")
        if (yield from self.stat(remote)).is_dir:
            raise IsADirectory(f"{self.url.address}: {remote}: is a directory (get fetches a file)")
        raise NotADirectory(f"{self.url.address}: {remote}: not a directory")

    # ---- uploads ----------------------------------------------------------------------

    def put_many(
        self,
        locals_: Sequence[PathLike],
        remote: str,
        *,
        no_clobber: bool,
        progress: Progress | None,
    ) -> Call[list[TransferResult | FtransferError]]:
        sources = [os.fspath(path) for path in locals_]
        if not sources:
            raise UsageError("put needs at least one local file")
        remote_is_dir = False
        if put_needs_stat(len(sources), remote) and self.url.scheme != "tftp":
            try:
                remote_is_dir = (yield from self.stat(remote)).is_dir
            except NotFound:
                remote_is_dir = False  # not there: the name will be created
        targets = put_targets(sources, remote, remote_is_dir=remote_is_dir)
        items = list(zip(sources, targets, strict=True))
        if self.url.scheme == "tcp":  # (which reports each outcome as its reply arrives)
            result = yield from _tcp(
                lambda logic: logic.put_many(items, exclusive=no_clobber, progress=progress)
            )
            assert isinstance(result, list)
            return result
        outcomes: list[TransferResult | FtransferError] = []
        for path, target in items:  # each file open only while it is sent
            try:
                with LocalFile(path) as source:
                    outcome: TransferResult | FtransferError = yield from self._put_one(
                        source, target, no_clobber, progress
                    )
            except FtransferError as exc:
                outcome = exc
            outcomes.append(outcome)
            if progress is not None:
                progress.file_outcome(outcome)
        return outcomes

    def _put_one(
        self, source: LocalFile, target: str, no_clobber: bool, progress: Progress | None
    ) -> Call[TransferResult]:
        if self.url.scheme == "tftp":
            if no_clobber:
                raise _not_supported(self.url, "refuse to replace a file (no-clobber)")
            tftp = self._tftp(target, source=source, progress=progress)
            yield RunTftp(call=tftp)
            return tftp.outcome(source.path)
        udp = yield from self._udp(
            PUT, target, source=source, progress=progress, exclusive=no_clobber
        )
        yield RunUdp(call=udp)
        return udp.outcome(source.path)


class Download:
    """Where one download goes, decided before it starts."""

    def __init__(self, remote: str, local: PathLike | int | None, no_clobber: bool) -> None:
        if not remote.rstrip("/"):
            raise UsageError("get needs a remote file, not the root directory")
        self.remote, self.no_clobber = remote, no_clobber
        self.fd: int | None = None
        self.target: str | None = None
        if isinstance(local, int):
            self.fd = local
        else:
            self.target = get_target(remote, None if local is None else os.fspath(local))
            if self.target is None:
                self.fd = 1  # "-": standard output
        self.local = self.target if self.target is not None else STDOUT
        if self.target is not None and no_clobber and os.path.lexists(self.target):
            raise Exists(f"{local_label(self.target)}: exists, not replaced (no-clobber)")

    def sink(self, size: int | None, mtime_ns: int, mode: int | None) -> Sink:
        if self.target is None:
            assert self.fd is not None
            return StreamSink(self.fd)
        return FileSink(
            self.target, size=size, mtime_ns=mtime_ns, mode=mode, exclusive=self.no_clobber
        )
