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
MOVE). The calls that move many files (trees, patterns, skipping what is there)
are client/batch.py's, mixed in.
"""

from __future__ import annotations

import os
import time

from ..config import ClientConfig
from ..errors import (
    ConnectionFailed,
    FtransferError,
    IsADirectory,
    NotADirectory,
    NotFound,
    ProtocolError,
    Refused,
    ResumeRefused,
    TlsRequired,
    UsageError,
)
from ..proto.ratelimit import Limits, bucket, limits
from ..proto.tcp import events as ev
from ..storage.entry import Entry
from .batch import Batches
from .downloads import Download, into_directory
from .local import LocalFile, MemorySink, Sink
from .plan import put_needs_stat, put_targets, remote_basename
from .requests import (
    STDOUT,
    Call,
    PathLike,
    Request,
    RunTcp,
    RunTftp,
    RunUdp,
    not_supported,
    tcp,
)
from .result import Progress, Stat, TransferResult
from .skip import check_mode
from .urls import Url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..proto.udp.sealed import Ticket
    from .resume import Resumes
    from .tftp import TftpCall
    from .udp import MakeSink, ResumeSink, UdpCall

__all__ = [
    "STDOUT",
    "Call",
    "Calls",
    "Download",
    "PathLike",
    "Request",
    "RunTcp",
    "RunTftp",
    "RunUdp",
    "into_directory",
]

# UDP operations (proto/udp/packets.Operation), named here so that a TCP command
# does not import the UDP core.
PUT, GET, LIST, STAT, REMOVE, MKDIR = 1, 2, 3, 4, 5, 6


class Calls(Batches):
    """The calls against one server, as generators (see the module docstring)."""

    def __init__(self, url: Url, config: ClientConfig) -> None:
        self.url, self.config = url, config
        self._rate_limits: tuple[Limits | None, Limits | None] | None = None

    def rate_limits(self) -> tuple[Limits | None, Limits | None]:
        """The client's buckets (sending, receiving), one pair for every UDP
        request of this client: many small files share one limit."""
        if self._rate_limits is None:
            now, rate = time.monotonic(), self.config.limit_rate
            self._rate_limits = (limits(bucket(rate, now)), limits(bucket(rate, now)))
        return self._rate_limits

    def _udp(
        self,
        operation: int,
        path: str,
        *,
        source: LocalFile | None = None,
        make_sink: MakeSink | None = None,
        progress: Progress | None = None,
        exclusive: bool = False,
        parents: bool = False,
        target: str | None = None,
        resume_sink: ResumeSink | None = None,
    ) -> Call[UdpCall]:
        """One UDP request, sealed with a ticket fetched over the TLS connection
        first (one round trip on a connection already open); plaintext only with
        ``--insecure``."""
        from ..proto.udp.packets import Operation
        from .udp import UdpCall

        ticket = None if self.config.insecure else (yield from self.ticket())
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
            parents=parents,
            ticket=ticket,
            limits=self.rate_limits(),
            resumes=self._resumes(),
            target=target,
            resume_sink=resume_sink,
        )

    def _resumes(self) -> Resumes | None:
        """Where this client keeps what a resume needs (None: --no-resume)."""
        if not self.config.resume:
            return None
        from .resume import Resumes

        return Resumes(self.url.address, self.url.user, state_dir=self.config.state_dir)

    def ticket(self) -> Call[Ticket]:
        """The keys of one sealed UDP exchange, over the TLS connection (TICKET)."""
        from ..proto.udp.sealed import Ticket

        issued = yield from tcp(lambda logic: logic.ticket())
        assert isinstance(issued, ev.TicketIssued)
        return Ticket(ticket=issued.ticket, secret=issued.secret, lifetime_s=issued.lifetime_s)

    def probe_ticket(self) -> Call[Ticket | FtransferError | None]:
        """The keys ``auto://``'s echoes are sealed with: None with --insecure; a
        server with no encrypted UDP refuses them, and that refusal is the answer."""
        if self.config.insecure:
            return None
        try:
            return (yield from self.ticket())
        except (TlsRequired, Refused) as exc:
            return exc

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
            result = yield from tcp(lambda logic: logic.stat(path))
            assert isinstance(result, Stat)
            return result
        if self.url.scheme == "tftp":
            raise not_supported(self.url, "stat")
        from ..proto.tcp.frames import FrameType, decode_untrusted
        from .tcp import wire_to_entry

        stated = decode_untrusted(FrameType.STAT_OK, (yield from self._udp_answer(STAT, path)))
        assert isinstance(stated, ev.Stated)
        digest = stated.digest if stated.entry.kind is ev.EntryKind.FILE else None
        return Stat(entry=wire_to_entry(stated.entry), digest=digest)

    def ping(self, seq: int) -> Call[float]:
        if self.url.scheme != "tcp":
            raise not_supported(self.url, "echo over TCP (ping without --tcp uses UDP)")
        result = yield from tcp(lambda logic: logic.ping(seq))
        assert isinstance(result, float)
        return result

    def listing(self, path: str) -> Call[list[Entry]]:
        if self.url.scheme == "tcp":
            result = yield from tcp(lambda logic: logic.listing(path))
            assert isinstance(result, list)
            return result
        if self.url.scheme == "tftp":
            raise not_supported(self.url, "list directories")
        from ..proto.tcp.frames import FrameType, decode_untrusted
        from .tcp import wire_to_entry

        listed = decode_untrusted(FrameType.ENTRIES, (yield from self._udp_answer(LIST, path)))
        assert isinstance(listed, ev.Listed)
        return sorted((wire_to_entry(e) for e in listed.entries), key=lambda e: e.name)

    def remove(self, path: str) -> Call[None]:
        if self.url.scheme == "tcp":
            yield from tcp(lambda logic: logic.simple(ev.RemoveRequested(path=path)))
        elif self.url.scheme == "tftp":
            raise not_supported(self.url, "remove")
        else:
            call = yield from self._udp(REMOVE, path)
            yield RunUdp(call=call)
            call.outcome("")

    def mkdir(self, path: str, *, parents: bool) -> Call[None]:
        if self.url.scheme == "tcp":
            request = ev.MkdirRequested(path=path, parents=parents)
            yield from tcp(lambda logic: logic.simple(request))
        elif self.url.scheme == "tftp":
            raise not_supported(self.url, "create directories")
        else:
            call = yield from self._udp(MKDIR, path, parents=parents)
            yield RunUdp(call=call)
            call.outcome("")

    def move(self, source: str, target: str, *, no_clobber: bool) -> Call[None]:
        if self.url.scheme != "tcp":
            raise not_supported(self.url, "move")
        if not target.strip("/"):
            target = yield from self._into_root(source)
        request = ev.MoveRequested(source=source, target=target, exclusive=no_clobber)
        yield from tcp(lambda logic: logic.simple(request))

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
            [outcome] = yield from self._tcp_downloads([plan.job()], progress)
            if isinstance(outcome, FtransferError):
                raise outcome
            return outcome
        if self.url.scheme == "tftp":
            tftp = self._tftp(remote, sink=plan.sink(None, -1, None), progress=progress)
            yield RunTftp(call=tftp)
            return tftp.outcome(plan.local)
        udp = yield from self._udp(
            GET,
            remote,
            make_sink=lambda accepted: plan.sink(accepted.size, accepted.mtime_ns, accepted.mode),
            progress=progress,
            target=plan.target,
            resume_sink=lambda accepted, resume: plan.sink(
                accepted.size, accepted.mtime_ns, accepted.mode, resume=resume
            ),
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
        recursive: bool = False,
        no_clobber: bool,
        progress: Progress | None,
        skip: str | None = None,
    ) -> Call[list[TransferResult | FtransferError]]:
        check_mode(skip)
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
        outcomes: list[TransferResult | FtransferError] = []
        if recursive:
            items = yield from self._put_trees(items, outcomes, progress)
        if skip is not None and self.url.scheme != "tftp":
            items = yield from self._uploads_needed(items, skip, progress)
        outcomes.extend((yield from self._uploads(items, no_clobber, progress)))
        return outcomes

    def _uploads(
        self, items: list[tuple[str, str]], no_clobber: bool, progress: Progress | None
    ) -> Call[list[TransferResult | FtransferError]]:
        if self.url.scheme == "tcp":  # (which reports each outcome as its reply arrives)
            result = yield from tcp(
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
                if isinstance(exc, ConnectionFailed | ProtocolError):
                    raise
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
                raise not_supported(self.url, "refuse to replace a file (no-clobber)")
            tftp = self._tftp(target, source=source, progress=progress)
            yield RunTftp(call=tftp)
            return tftp.outcome(source.path)
        for attempt in (1, 2):
            udp = yield from self._udp(
                PUT, target, source=source, progress=progress, exclusive=no_clobber
            )
            yield RunUdp(call=udp)
            try:
                return udp.outcome(source.path)
            except ResumeRefused:
                if attempt == 2:
                    raise
                # the server's partial is not of these bytes: once more, from 0
        raise AssertionError("unreachable")
