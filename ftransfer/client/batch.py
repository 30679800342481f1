"""Batches: many files, whole trees, patterns, and skipping what is there.

Theory of operation
-------------------
``Batches`` is the part of ``Calls`` (client/calls.py) that moves many files in
one call, each step a generator of the same requests as every call:

- ``get_many``: remote names and patterns (client/tree.py ``expand``: one LIST per
  directory searched) become entries; directories are walked when recursive
  (``remote_tree``), into one plan; the local directories are made (never through
  a symlink), the files downloaded as one pipelined batch over TCP (GET_WINDOW
  ahead) or one request each over UDP, and the directories dated last;
- ``put_many(recursive=True)`` (``_put_trees``): local trees walked
  (``local_tree``), the remote directories made with pipelined MKDIRs, the files
  then uploaded as one batch (client/calls.py);
- ``skip`` ("update", "checksum"; client/skip.py): the files the other side has
  already are left out before anything moves.

A failure of one file or directory is an outcome of its own (handed to
``progress.file_outcome`` as soon as it is known); the others go on. Only a lost
or broken connection ends the batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .._records import evolve
from ..errors import (
    ConnectionFailed,
    FtransferError,
    IsADirectory,
    NotSupported,
    ProtocolError,
    UsageError,
)
from ..proto.tcp import events as ev
from ..storage.entry import Entry, EntryKind
from ..storage.names import escape
from .downloads import Download, into_directory, make_local_root
from .plan import join_remote, remote_basename
from .requests import Call, PathLike, not_supported, tcp
from .result import Progress, Stat, TransferResult
from .skip import check_mode, local_digest, local_stat, memory_for, same_quick
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
    from ..config import ClientConfig
    from .tcp import DownloadJob


class Batches:
    """The many-file calls (see the module docstring); mixed into ``Calls``, whose
    single calls they use."""

    url: Url
    config: ClientConfig

    def stat(self, path: str) -> Call[Stat]:
        raise NotImplementedError  # (Calls)

    def listing(self, path: str) -> Call[list[Entry]]:
        raise NotImplementedError  # (Calls)

    def mkdir(self, path: str, *, parents: bool) -> Call[None]:
        raise NotImplementedError  # (Calls)

    def get(
        self,
        remote: str,
        local: PathLike | int | None,
        *,
        no_clobber: bool,
        progress: Progress | None,
    ) -> Call[TransferResult]:
        raise NotImplementedError  # (Calls)

    def _tcp_downloads(
        self, jobs: list[DownloadJob], progress: Progress | None
    ) -> Call[list[TransferResult | FtransferError]]:
        result = yield from tcp(lambda logic: logic.get_many(jobs, progress))
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
            raise not_supported(self.url, "list directories (for -r or a pattern)")
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
                _report_tree(tree, outcomes, progress)
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
        answers: list[object]
        if self.url.scheme == "tcp":
            result = yield from tcp(lambda logic: logic.stat_many(paths))
            assert isinstance(result, list)
            answers = result
        else:
            answers = yield from _one_by_one(paths, self.stat)
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
            memory = memory_for(self.config.state_dir)
            digests = yield from self._remote_digests([items[i][1] for i, _, _ in candidates])
            for (index, path, st), digest in zip(candidates, digests, strict=True):
                if digest is not None and digest == local_digest(path, st, memory):
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
            memory = memory_for(self.config.state_dir)
            digests = yield from self._remote_digests([files[i].source for i, _ in candidates])
            for (index, st), digest in zip(candidates, digests, strict=True):
                if digest is not None and digest == local_digest(files[index].target, st, memory):
                    same.add(index)
        if same and progress is not None:
            progress.unchanged(len(same), skip)
        return [file for index, file in enumerate(files) if index not in same]

    def _put_trees(
        self,
        items: list[tuple[str, str]],
        outcomes: list[TransferResult | FtransferError],
        progress: Progress | None,
    ) -> Call[list[tuple[str, str]]]:
        """``put -r``: every directory among the sources walked (client/tree.py), the
        remote directories made, and the files to upload, in order."""
        if self.url.scheme == "tftp":
            raise not_supported(self.url, "create directories (for -r)")
        files: list[TreeFile] = []
        directories: list[str] = []
        for source, target in items:
            if not os.path.isdir(source):
                files.append(TreeFile(source=source, target=target, size=_local_size(source)))
                continue
            tree = local_tree(source, target)
            _report_tree(tree, outcomes, progress)
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
        answers: list[object]
        if self.url.scheme == "tcp":
            result = yield from tcp(lambda logic: logic.simple_many(requests))
            assert isinstance(result, list)
            answers = result
        else:
            answers = yield from _one_by_one(directories, lambda p: self.mkdir(p, parents=True))
        failed: list[str] = []
        for path, answer in zip(directories, answers, strict=True):
            if isinstance(answer, FtransferError):
                if not _below(path, failed, "/"):  # (one line for a subtree)
                    _report_failure(outcomes, progress, answer)
                failed.append(path)
        return failed


def _one_by_one(items: list[str], one: Callable[[str], Call[object]]) -> Call[list[object]]:
    """``one(item)`` for each, in order (UDP: a request each): its result, or the
    error that refused it; a lost connection or an unsupported call ends them."""
    answers: list[object] = []
    for item in items:
        try:
            answers.append((yield from one(item)))
        except FtransferError as exc:
            if isinstance(exc, ConnectionFailed | ProtocolError | NotSupported):
                raise
            answers.append(exc)
    return answers


def _report_tree(
    tree: Tree, outcomes: list[TransferResult | FtransferError], progress: Progress | None
) -> None:
    """A plan's warnings (what it skipped) and failures (what it could not read)."""
    for line in tree.skipped:
        _skip(progress, line)
    for failure in tree.failures:
        _report_failure(outcomes, progress, failure)


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
