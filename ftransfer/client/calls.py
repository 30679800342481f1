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
MOVE).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence

from .._records import Record, evolve
from ..config import ClientConfig
from ..errors import (
    ConnectionFailed,
    Exists,
    FtransferError,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotSupported,
    ProtocolError,
    UsageError,
)
from ..proto.tcp import events as ev
from ..storage.entry import Entry, EntryKind
from ..storage.names import escape
from .local import FileSink, LocalFile, MemorySink, Sink, StreamSink, local_label
from .plan import get_target, join_remote, put_needs_stat, put_targets, remote_basename
from .result import Progress, Stat, TransferResult
from .skip import check_mode, local_digest, local_stat, same_quick
from .tree import (
    Tree,
    TreeFile,
    expand,
    has_magic,
    local_tree,
    make_local_directory,
    remote_tree,
    set_directory_times,
)
from .urls import Url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    from .tcp import DownloadJob, Op, TcpLogic
    from .tftp import TftpCall
    from .udp import MakeSink, UdpCall

    T = TypeVar("T")

# UDP operations (proto/udp/packets.Operation), named here so that a TCP command
# does not import the UDP core.
PUT, GET, LIST, STAT, REMOVE, MKDIR = 1, 2, 3, 4, 5, 6

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
        parents: bool = False,
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
            parents=parents,
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
        if self.url.scheme == "tcp":
            request = ev.MkdirRequested(path=path, parents=parents)
            yield from _tcp(lambda logic: logic.simple(request))
        elif self.url.scheme == "tftp":
            raise _not_supported(self.url, "create directories")
        else:
            call = yield from self._udp(MKDIR, path, parents=parents)
            yield RunUdp(call=call)
            call.outcome("")

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
        )
        yield RunUdp(call=udp)
        return udp.outcome(plan.local)

    def _tcp_downloads(
        self, jobs: list[DownloadJob], progress: Progress | None
    ) -> Call[list[TransferResult | FtransferError]]:
        result = yield from _tcp(lambda logic: logic.get_many(jobs, progress))
        assert isinstance(result, list)
        return result

    def get_many(
        self,
        remotes: Sequence[str],
        local: PathLike | None,
        *,
        recursive: bool,
        no_clobber: bool,
        progress: Progress | None,
        skip: str | None = None,
    ) -> Call[list[TransferResult | FtransferError]]:
        """Download remote files, patterns and (``recursive``) directories into the
        local directory ``local`` (or, for one source that is no pattern, as
        ``local``), as scp -r does; see client/tree.py for the rules. ``skip``:
        leave out files already here (client/skip.py)."""
        check_mode(skip)
        if not remotes:
            raise UsageError("get needs at least one remote name")
        if self.url.scheme == "tftp":
            raise _not_supported(self.url, "list directories (for -r or a pattern)")
        outcomes: list[TransferResult | FtransferError] = []
        sources = yield from self._sources(remotes, outcomes, progress)
        target = None if local is None else os.fspath(local)
        into = into_directory(remotes, target)
        trees = self._download_trees(sources, target, into, recursive, outcomes, progress)
        plan = yield from trees
        if into and target and (failure := make_local_root(target)) is not None:
            _report_failure(outcomes, progress, failure)  # (nowhere to put anything)
            return outcomes
        yield from self._fetch(plan, no_clobber, skip, outcomes, progress)
        return outcomes

    def _sources(
        self,
        remotes: Sequence[str],
        outcomes: list[TransferResult | FtransferError],
        progress: Progress | None,
    ) -> Call[list[Entry]]:
        """Each remote name as an entry named by its path; patterns expanded. A name
        that is not there is a failure of its own, and the others go on."""
        found: list[Entry] = []
        for remote in remotes:
            try:
                if has_magic(remote):
                    found.extend((yield from expand(self.listing, self.url.address, remote)))
                    continue
                entry = (yield from self.stat(remote)).entry
            except FtransferError as exc:
                if isinstance(exc, ConnectionFailed | ProtocolError):
                    raise
                _report_failure(outcomes, progress, exc)
                continue
            found.append(evolve(entry, name=remote.rstrip("/")))
        return found

    def _download_trees(
        self,
        sources: list[Entry],
        target: str | None,
        into: bool,
        recursive: bool,
        outcomes: list[TransferResult | FtransferError],
        progress: Progress | None,
    ) -> Call[Tree]:
        """One plan for every source: files as they are, directories walked."""
        directories: list[tuple[str, int]] = []
        files: list[TreeFile] = []
        for entry in sources:
            name = remote_basename(entry.name)
            local = os.path.join(target or "", name) if into else (target or name)
            if entry.kind is EntryKind.FILE:
                files.append(
                    TreeFile(
                        source=entry.name, target=local, size=entry.size, mtime_ns=entry.mtime_ns
                    )
                )
            elif entry.kind is not EntryKind.DIRECTORY:
                _skip(progress, f"{self.url.address}: {escape(entry.name)}: not a regular file")
            elif not recursive:
                message = f"{self.url.address}: {escape(entry.name)}: is a directory (use -r)"
                _report_failure(outcomes, progress, IsADirectory(message))
            else:
                tree = yield from remote_tree(
                    self.listing, self.url.address, entry.name, local, entry.mtime_ns
                )
                for line in tree.skipped:
                    _skip(progress, line)
                for failure in tree.failures:
                    _report_failure(outcomes, progress, failure)
                directories.extend(tree.directories)
                files.extend(tree.files)
        return Tree(directories=tuple(directories), files=tuple(files), skipped=(), failures=())

    def _fetch(
        self,
        plan: Tree,
        no_clobber: bool,
        skip: str | None,
        outcomes: list[TransferResult | FtransferError],
        progress: Progress | None,
    ) -> Call[None]:
        """Make the plan's directories, download its files (those not already here,
        with ``skip``), then date the directories."""
        files = list(plan.files)
        if skip is not None:
            files = yield from self._downloads_needed(files, skip, progress)
        if progress is not None:
            progress.batch_started(len(files), sum(file.size for file in files))
        failed: list[str] = []
        for directory, _ in plan.directories:
            if _below(directory, failed):
                continue
            failure = make_local_directory(directory)
            if failure is not None:
                failed.append(directory)
                _report_failure(outcomes, progress, failure)
        downloads = [
            Download(file.source, file.target, False, exact=True)
            for file in files
            if not _below(file.target, failed)  # (never through what is there instead)
        ]
        if self.url.scheme == "tcp":
            jobs = [download.job(no_clobber) for download in downloads]
            outcomes.extend((yield from self._tcp_downloads(jobs, progress)))
        else:
            for download in downloads:
                try:
                    outcome: TransferResult | FtransferError = yield from self.get(
                        download.remote, download.local, no_clobber=no_clobber, progress=progress
                    )
                except FtransferError as exc:
                    if isinstance(exc, ConnectionFailed | ProtocolError):
                        raise
                    outcome = exc
                outcomes.append(outcome)
                if progress is not None:
                    progress.file_outcome(outcome)
        set_directory_times(plan.directories)

    # ---- skip what is already there (client/skip.py) -----------------------------

    def _remote_digests(self, paths: list[str]) -> Call[list[bytes | None]]:
        """The server's xxh3-128 of each path (None: not a file there); pipelined
        STATs over TCP."""
        answers: list[Stat | FtransferError] = []
        if self.url.scheme == "tcp":
            result = yield from _tcp(lambda logic: logic.stat_many(paths))
            assert isinstance(result, list)
            answers = result
        else:
            for path in paths:
                try:
                    answers.append((yield from self.stat(path)))
                except FtransferError as exc:
                    if isinstance(exc, ConnectionFailed | ProtocolError):
                        raise
                    answers.append(exc)
        return [answer.digest if isinstance(answer, Stat) else None for answer in answers]

    def _remote_files(self, targets: list[str]) -> Call[dict[str, Entry]]:
        """What the server has at these names: one LIST per parent directory."""
        found: dict[str, Entry] = {}
        for directory in sorted({target.rpartition("/")[0] for target in targets}):
            try:
                entries = yield from self.listing(directory)
            except FtransferError as exc:
                if isinstance(exc, ConnectionFailed | ProtocolError):
                    raise
                continue  # not there (yet): every file in it is sent
            for entry in entries:
                if entry.kind is EntryKind.FILE:
                    found[join_remote(directory, entry.name)] = entry
        return found

    def _uploads_needed(
        self, items: list[tuple[str, str]], skip: str, progress: Progress | None
    ) -> Call[list[tuple[str, str]]]:
        """The uploads whose file the server does not have already, in order."""
        remote = yield from self._remote_files([target for _, target in items])
        same: set[int] = set()
        candidates: list[tuple[int, str, os.stat_result]] = []
        for index, (path, target) in enumerate(items):
            st, entry = local_stat(path), remote.get(target)
            if st is None or entry is None or entry.size != st.st_size:
                continue
            if skip == "update":
                if same_quick(entry.size, entry.mtime_ns, st):
                    same.add(index)
            else:
                candidates.append((index, path, st))
        if candidates:
            digests = yield from self._remote_digests([items[i][1] for i, _, _ in candidates])
            for (index, path, st), digest in zip(candidates, digests, strict=True):
                if digest is not None and digest == local_digest(path, st):
                    same.add(index)
        if same and progress is not None:
            progress.unchanged(len(same), skip)
        return [item for index, item in enumerate(items) if index not in same]

    def _downloads_needed(
        self, files: list[TreeFile], skip: str, progress: Progress | None
    ) -> Call[list[TreeFile]]:
        """The downloads whose file is not here already, in order."""
        same: set[int] = set()
        candidates: list[tuple[int, os.stat_result]] = []
        for index, file in enumerate(files):
            st = local_stat(file.target)
            if st is None or st.st_size != file.size:
                continue
            if skip == "update":
                if same_quick(file.size, file.mtime_ns, st):
                    same.add(index)
            else:
                candidates.append((index, st))
        if candidates:
            digests = yield from self._remote_digests([files[i].source for i, _ in candidates])
            for (index, st), digest in zip(candidates, digests, strict=True):
                if digest is not None and digest == local_digest(files[index].target, st):
                    same.add(index)
        if same and progress is not None:
            progress.unchanged(len(same), skip)
        return [file for index, file in enumerate(files) if index not in same]

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
                if isinstance(exc, ConnectionFailed | ProtocolError):
                    raise
                outcome = exc
            outcomes.append(outcome)
            if progress is not None:
                progress.file_outcome(outcome)
        return outcomes

    def _put_trees(
        self,
        items: list[tuple[str, str]],
        outcomes: list[TransferResult | FtransferError],
        progress: Progress | None,
    ) -> Call[list[tuple[str, str]]]:
        """``put -r``: every directory among the sources walked (client/tree.py), the
        remote directories made, and the files to upload, in order."""
        if self.url.scheme == "tftp":
            raise _not_supported(self.url, "create directories (for -r)")
        files: list[TreeFile] = []
        directories: list[str] = []
        for source, target in items:
            if not os.path.isdir(source):
                files.append(TreeFile(source=source, target=target, size=_local_size(source)))
                continue
            tree = local_tree(source, target)
            for line in tree.skipped:
                _skip(progress, line)
            for failure in tree.failures:
                _report_failure(outcomes, progress, failure)
            directories.extend(directory for directory, _ in tree.directories)
            files.extend(tree.files)
        if progress is not None:
            progress.batch_started(len(files), sum(file.size for file in files))
        failed = yield from self._remote_directories(directories, outcomes, progress)
        return [(f.source, f.target) for f in files if not _below(f.target, failed, "/")]

    def _remote_directories(
        self,
        directories: list[str],
        outcomes: list[TransferResult | FtransferError],
        progress: Progress | None,
    ) -> Call[list[str]]:
        """MKDIR -p each (pipelined over TCP); the ones that failed."""
        requests = [ev.MkdirRequested(path=path, parents=True) for path in directories]
        answers: list[FtransferError | None] = []
        if self.url.scheme == "tcp":
            result = yield from _tcp(lambda logic: logic.simple_many(requests))
            assert isinstance(result, list)
            answers = result
        else:
            for path in directories:
                try:
                    yield from self.mkdir(path, parents=True)
                    answers.append(None)
                except FtransferError as exc:
                    if isinstance(exc, ConnectionFailed | ProtocolError | NotSupported):
                        raise
                    answers.append(exc)
        failed: list[str] = []
        for path, answer in zip(directories, answers, strict=True):
            if answer is not None:
                if not _below(path, failed, "/"):  # (one line for a subtree)
                    _report_failure(outcomes, progress, answer)
                failed.append(path)
        return failed

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

    def __init__(
        self, remote: str, local: PathLike | int | None, no_clobber: bool, *, exact: bool = False
    ) -> None:
        """``exact``: ``local`` is the file's path, already decided (a batch)."""
        if not remote.rstrip("/"):
            raise UsageError("get needs a remote file, not the root directory")
        self.remote, self.no_clobber = remote, no_clobber
        self.fd: int | None = None
        self.target: str | None = None
        if isinstance(local, int):
            self.fd = local
        else:
            chosen = None if local is None else os.fspath(local)
            self.target = chosen if exact else get_target(remote, chosen)
            if self.target is None:
                self.fd = 1  # "-": standard output
        self.local = self.target if self.target is not None else STDOUT
        if self.target is not None and no_clobber and os.path.lexists(self.target):
            raise Exists(f"{local_label(self.target)}: exists, not replaced (no-clobber)")

    def job(self, no_clobber: bool | None = None) -> DownloadJob:
        """This download as one job of a TCP batch (``no_clobber``: checked when its
        file arrives, for a batch planned before any file was written)."""
        from .tcp import DownloadJob

        exclusive = self.no_clobber if no_clobber is None else no_clobber

        def make_sink(header: ev.FileStarted) -> Sink:
            return self.sink(header.size, header.mtime_ns, header.mode, exclusive=exclusive)

        return DownloadJob(remote=self.remote, make_sink=make_sink, local=self.local)

    def sink(
        self, size: int | None, mtime_ns: int, mode: int | None, *, exclusive: bool | None = None
    ) -> Sink:
        if self.target is None:
            assert self.fd is not None
            return StreamSink(self.fd)
        exclusive = self.no_clobber if exclusive is None else exclusive
        return FileSink(self.target, size=size, mtime_ns=mtime_ns, mode=mode, exclusive=exclusive)


def into_directory(remotes: Sequence[str], local: str | None) -> bool:
    """Whether downloads go into the directory ``local`` under their own names (scp's
    rule): several sources or a pattern, no local name, a name ending in '/', or an
    existing directory; otherwise the one source becomes ``local``."""
    if len(remotes) > 1 or any(has_magic(remote) for remote in remotes):
        return True
    return not local or local.endswith(("/", os.sep)) or os.path.isdir(local)


def make_local_root(target: str) -> FtransferError | None:
    """The local directory downloads go into: created if missing (one level, as
    rsync does); a failure to report, or None."""
    if os.path.isdir(target):
        return None
    return make_local_directory(target.rstrip("/" + os.sep) or target)


def _report_failure(
    outcomes: list[TransferResult | FtransferError],
    progress: Progress | None,
    failure: FtransferError | None,
) -> None:
    if failure is None:
        return
    outcomes.append(failure)
    if progress is not None:
        progress.file_outcome(failure)


def _below(path: str, directories: list[str], sep: str = os.sep) -> bool:
    """Whether ``path`` lies in (or is) one of ``directories``."""
    return any(path == d or path.startswith(d.rstrip(sep) + sep) for d in directories)


def _local_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # (its upload reports why)


def _skip(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress.skipped(line)
