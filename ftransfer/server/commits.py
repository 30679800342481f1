"""Group commit: a connection's finished uploads made durable in batches.

Theory of operation
-------------------
An upload is answered (PUT_OK) only once it is verified, fsynced and renamed
into place. Done one at a time, each commit is a hand-off to a worker thread and
back, and the connection reads nothing meanwhile: for 4 KiB files that hand-off,
not the disk, is most of a file's cost. So a TCP session hands each upload that
ended to its ``GroupCommit`` and goes on reading the next request at once:

- if no commit is running, the waiting uploads (often just this one) go to a
  worker thread as one batch, committed in order there; while it runs, uploads
  that end wait, and form the next batch when it is done (a database's group
  commit: the batch grows as large as the disk is slow);
- each upload's reply (PUT_OK, or the ERROR of its commit) is sent when its
  batch is done, in upload order. The protocol's replies are in request order, so
  the session calls ``settle`` (wait until nothing is pending) before it answers
  anything else: a GET, a LIST, a refused PUT;
- at most ``MAX_PENDING`` uploads wait (each holds an open temporary file): the
  session settles before it takes one more;
- ``close`` (the connection ends, the server shuts down) aborts the uploads not
  yet handed to a thread, removing their temporaries, and waits for a batch
  already running, so nothing touches a file after the session is gone.

Nothing changes for a client: every PUT still gets its own reply after its own
commit, and an upload that is not answered was not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..errors import FtransferError, InternalError
from ..proto.tcp import events as ev
from .operations import Upload

logger = logging.getLogger("ftransfer.server")

MAX_PENDING = 64
"""Uploads that may wait for a commit at once, per connection."""

Outcome = bytes | FtransferError
Send = Callable[[ev.Event], None]


def commit_batch(batch: list[tuple[Upload, bytes]]) -> list[Outcome]:
    """Commit each upload of a batch, in order (in a worker thread): the stored
    digest, or the error that refused it. Every upload has ended on return."""
    outcomes: list[Outcome] = []
    for upload, digest in batch:
        with upload:  # (an upload that did not commit is aborted on the way out)
            try:
                outcomes.append(upload.commit(digest))
            except FtransferError as exc:
                outcomes.append(exc)
            except Exception as exc:  # the others still get their answers
                logger.exception("commit of %s failed", upload.name)
                outcomes.append(InternalError(f"internal server error: {type(exc).__name__}"))
    return outcomes


class GroupCommit:
    """One connection's uploads waiting to be committed (see the module docstring)."""

    def __init__(self, send: Send, run: Callable[..., Awaitable[list[Outcome]]]) -> None:
        """``send``: queue a reply; ``run``: ``commit_batch`` in a worker thread."""
        self._send, self._run = send, run
        self._waiting: list[tuple[Upload, bytes]] = []
        self._running: asyncio.Task[None] | None = None
        self._failure: Exception | None = None
        """Why a batch's replies could not go out (nothing more is committed)."""

    @property
    def pending(self) -> int:
        """Uploads not yet answered."""
        return len(self._waiting) + (self._running is not None)

    @property
    def full(self) -> bool:
        return len(self._waiting) >= MAX_PENDING

    def add(self, upload: Upload, digest: bytes) -> None:
        """An upload that ended with END and ``digest``: it is this object's now."""
        self._waiting.append((upload, digest))
        if self._running is None and self._failure is None:
            self._start()

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = asyncio.ensure_future(self._commit(batch))

    async def _commit(self, batch: list[tuple[Upload, bytes]]) -> None:
        try:
            outcomes = await self._run(commit_batch, batch)
            for outcome in outcomes:
                if isinstance(outcome, FtransferError):
                    code = outcome.code or InternalError.code
                    self._send(ev.Failed(code=code, message=str(outcome)))
                else:
                    self._send(ev.PutCommitted(digest=outcome))
        except Exception as exc:  # the connection is gone: settle raises it
            self._failure = exc
            return
        finally:
            self._running = None
        if self._waiting:
            self._start()

    async def settle(self) -> None:
        """Wait until every upload handed over has been answered."""
        while self._running is not None:
            await asyncio.shield(self._running)
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Abort what waits; wait for a batch that runs (its files are in use)."""
        waiting, self._waiting = self._waiting, []
        for upload, _digest in waiting:
            with upload:
                upload.abort("the connection ended before its commit")
        running = self._running
        if running is not None:  # (a cancellation of ours still goes through)
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
