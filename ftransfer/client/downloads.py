"""Where a download goes, decided before it starts.

Theory of operation
-------------------
A ``Download`` settles the local side of one GET before any request: the path
(scp's rules, client/plan.py) or a descriptor (``-``: standard output), and the
no-clobber check; once the server's FILE header is known it makes the sink
(client/local.py) that writes, verifies and commits the bytes. A batch
(client/batch.py) gives each file its exact path (``exact``) and decides with
``into_directory`` whether its sources go into the local directory under their
own names, which ``make_local_root`` creates if missing (one level, as rsync).
"""

from __future__ import annotations

import os

from ..errors import Exists, FtransferError, UsageError
from ..proto.tcp import events as ev
from ..storage.partial import Resume
from .local import FileSink, Sink, StreamSink, local_label
from .plan import get_target
from .requests import STDOUT, PathLike
from .tree import has_magic, make_local_directory

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .tcp import DownloadJob


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

        def make_sink(header: ev.FileStarted, resume: Resume | None) -> Sink:
            return self.sink(
                header.size, header.mtime_ns, header.mode, exclusive=exclusive, resume=resume
            )

        return DownloadJob(
            remote=self.remote, make_sink=make_sink, local=self.local, target=self.target
        )

    def sink(
        self,
        size: int | None,
        mtime_ns: int,
        mode: int | None,
        *,
        exclusive: bool | None = None,
        resume: Resume | None = None,
    ) -> Sink:
        if self.target is None:
            assert self.fd is not None
            return StreamSink(self.fd)
        exclusive = self.no_clobber if exclusive is None else exclusive
        return FileSink(
            self.target, size=size, mtime_ns=mtime_ns, mode=mode, exclusive=exclusive, resume=resume
        )


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
