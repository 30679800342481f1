"""Trees: what ``put -r`` sends and ``get -r`` fetches, planned before a byte moves.

Theory of operation
-------------------
A recursive transfer is planned as a ``Tree``: the directories to create, parents
first, and the (source, target) pairs of the regular files, in name order. The
transfer then runs the files as one pipelined batch (client/calls.py), and a
download's directories get the server's mtimes last (a file written into a
directory changes its mtime), deepest first.

The rules are scp's and rsync's without ``-l``:

- Only directories and regular files are copied. A symlink, FIFO, socket or device
  is skipped with one warning line each (a symlink is never followed, so a tree
  cannot loop); depth stops at ``MAX_TREE_DEPTH`` and a plan at
  ``MAX_TREE_ENTRIES`` entries, so a hostile server's endless listing ends.
- A directory that cannot be read is a failure of its own; the rest goes on.
- Every name a server lists is checked as strictly as the server checks a client's
  (``storage.names.is_valid_component``: no ``/``, ``..``, ``.``, NUL, control
  characters, backslash), and a download only creates directories that are real
  directories, never through a symlink already on the local disk: a hostile server
  cannot make ``get -r`` write outside its target.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Generator

from .._records import Record
from ..errors import FtransferError, NotADirectory, NotRegularFile, RemoteProtocolError, UsageError
from ..storage.entry import Entry, EntryKind
from ..storage.names import is_valid_component, shown
from .local import local_label
from .plan import join_remote

MAX_TREE_DEPTH = 64
"""Directories deeper than this below a source are skipped (with a warning)."""
MAX_TREE_ENTRIES = 1_000_000
"""A plan holds at most this many entries (files, directories and skips)."""


class TreeFile(Record):
    """One regular file of a plan."""

    source: str
    target: str
    size: int
    mtime_ns: int = -1
    """The source's modification time (-1: not known)."""


class Tree(Record):
    """One recursive transfer's plan."""

    directories: tuple[tuple[str, int], ...]
    """Target directories to create, parents first, with the source's mtime_ns
    (-1: unknown)."""
    files: tuple[TreeFile, ...]
    """Every regular file, in name order."""
    skipped: tuple[str, ...]
    """One warning line per entry left out (symlinks, special files, too deep)."""
    failures: tuple[FtransferError, ...]
    """Directories that could not be read."""

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files)


class _Planner:
    def __init__(self) -> None:
        self.directories: list[tuple[str, int]] = []
        self.files: list[TreeFile] = []
        self.skipped: list[str] = []
        self.failures: list[FtransferError] = []
        self._entries = 0

    def count(self, source: str) -> None:
        self._entries += 1
        if self._entries > MAX_TREE_ENTRIES:
            raise UsageError(f"{source}: more than {MAX_TREE_ENTRIES:,} entries in one transfer")

    def tree(self) -> Tree:
        return Tree(
            directories=tuple(self.directories),
            files=tuple(self.files),
            skipped=tuple(self.skipped),
            failures=tuple(self.failures),
        )


# ---- put -r: a local tree ----------------------------------------------------------


def local_tree(source: str, target: str) -> Tree:
    """The plan that uploads the local directory ``source`` as the remote ``target``."""
    planner = _Planner()
    planner.directories.append((target, -1))
    _walk_local(planner, source, target, 0)
    return planner.tree()


def _walk_local(planner: _Planner, path: str, remote: str, depth: int) -> None:
    try:
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        planner.failures.append(NotADirectory(f"{local_label(path)}: {exc.strerror}"))
        return
    for entry in entries:
        planner.count(entry.path)
        child = join_remote(remote, entry.name)
        label = local_label(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            planner.failures.append(NotRegularFile(f"{label}: {exc.strerror}"))
            continue
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if depth + 1 >= MAX_TREE_DEPTH:
                planner.skipped.append(f"{label}: deeper than {MAX_TREE_DEPTH} levels, skipped")
                continue
            planner.directories.append((child, -1))
            _walk_local(planner, entry.path, child, depth + 1)
        elif stat.S_ISREG(mode):
            planner.files.append(
                TreeFile(source=entry.path, target=child, size=st.st_size, mtime_ns=st.st_mtime_ns)
            )
        else:
            planner.skipped.append(f"{label}: {_kind_of(mode)}, skipped")


def _kind_of(mode: int) -> str:
    return "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"


# ---- get -r: a remote tree -----------------------------------------------------------

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .requests import Request

Listing = Callable[[str], Generator["Request", object, list[Entry]]]


def remote_tree(
    listing: Listing, server: str, source: str, target: str, mtime_ns: int
) -> Generator[Request, object, Tree]:
    """The plan that downloads the remote directory ``source`` as the local
    ``target`` (``listing`` lists a remote directory: one request each)."""
    planner = _Planner()
    planner.directories.append((target, mtime_ns))
    pending = [(source.rstrip("/"), target, 0)]
    while pending:
        remote, local, depth = pending.pop(0)
        try:
            entries = yield from listing(remote)
        except FtransferError as exc:
            planner.failures.append(exc)
            continue
        found: list[tuple[str, str, int]] = []
        for entry in entries:
            planner.count(remote)
            _plan_remote(planner, server, entry, (remote, local, depth), found)
        pending[:0] = found  # depth first, in name order, as the local walk
    return planner.tree()


def _plan_remote(
    planner: _Planner,
    server: str,
    entry: Entry,
    where: tuple[str, str, int],
    found: list[tuple[str, str, int]],
) -> None:
    remote_dir, local_dir, depth = where
    if not is_valid_component(entry.name):  # ../x, a/b, a NUL: never a local path
        planner.failures.append(
            RemoteProtocolError(f"{server}: listed a name no server may send: {shown(entry.name)}")
        )
        return
    remote = join_remote(remote_dir, entry.name)
    local = os.path.join(local_dir, entry.name)
    if entry.kind is EntryKind.DIRECTORY:
        if depth + 1 >= MAX_TREE_DEPTH:
            planner.skipped.append(f"{server}: {shown(remote)}: too deep, skipped")
            return
        planner.directories.append((local, entry.mtime_ns))
        found.append((remote, local, depth + 1))
    elif entry.kind is EntryKind.FILE:
        planner.files.append(
            TreeFile(source=remote, target=local, size=entry.size, mtime_ns=entry.mtime_ns)
        )
    else:
        what = "a symbolic link" if entry.kind is EntryKind.SYMLINK else "not a regular file"
        planner.skipped.append(f"{server}: {shown(remote)}: {what}, skipped")


def make_local_directory(path: str) -> FtransferError | None:
    """Create one directory of a download (its parent exists): the failure, or
    None. An existing directory is fine; anything else there (a file, a symlink:
    never followed) is refused."""
    try:
        os.mkdir(path)
        return None
    except FileExistsError:
        pass
    except OSError as exc:
        return NotADirectory(f"{local_label(path)}: {exc.strerror}")
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        return NotADirectory(f"{local_label(path)}: exists and is not a directory (not followed)")
    return None


def set_directory_times(directories: tuple[tuple[str, int], ...]) -> None:
    """Give downloaded directories the server's mtimes, deepest first."""
    for path, mtime_ns in reversed(directories):
        if mtime_ns >= 0:
            try:
                os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            except OSError:
                continue  # a time is not worth failing a download for


# ---- remote globs ---------------------------------------------------------------------


def has_magic(text: str) -> bool:
    """Whether a remote name is a pattern (``*``, ``?`` or ``[``), as glob says."""
    return any(char in text for char in "*?[")


def expand(listing: Listing, server: str, pattern: str) -> Generator[Request, object, list[Entry]]:
    """The remote names a pattern matches, each as an entry whose ``name`` is the
    whole path, in name order (one LIST per directory searched); a component
    without magic is taken as it is, and a wildcard does not match a leading ``.``
    (as a shell). A listed name that is not one valid component is never matched
    (``..`` would match ``.*``). No match: NotFound."""
    import fnmatch

    from ..errors import NotFound

    parts = [part for part in pattern.strip("/").split("/") if part]
    matches: list[tuple[str, Entry | None]] = [("", None)]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        following: list[tuple[str, Entry | None]] = []
        for directory, _ in matches:
            if not has_magic(part) and not last:
                following.append((join_remote(directory, part), None))
                continue
            for entry in (yield from listing(directory)):
                if not is_valid_component(entry.name):
                    continue  # ("..", "a/b" from a hostile server: never a local path)
                hidden = entry.name.startswith(".") and not part.startswith(".")
                if hidden or not fnmatch.fnmatchcase(entry.name, part):
                    continue
                if last or entry.kind is EntryKind.DIRECTORY:
                    following.append((join_remote(directory, entry.name), entry))
        matches = following
    found = [
        Entry(name=path, kind=entry.kind, size=entry.size, mtime_ns=entry.mtime_ns, mode=entry.mode)
        for path, entry in matches
        if entry is not None
    ]
    if not found:
        raise NotFound(f"{server}: {shown(pattern)}: no match")
    return found
