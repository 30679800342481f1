"""A real server on a background thread, for synchronous programs and tests.

Theory of operation
-------------------
``Server`` is asyncio code; a synchronous program (a test, a script, the README's
example) wants a server it can start, talk to with the blocking ``Client`` and
stop. ``serving`` runs one ``Server`` on its own event loop in a daemon thread,
returns once it is listening (so its ports are known) and, on exit, stops it the
same way SIGTERM stops ``ftransfer serve``: sessions end, uploads in progress are
aborted, the store is released. An error while starting (a port in use, a root
that is not a directory) is raised in the caller's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..config import ServerConfig
from ..server import Server
from ..storage.base import Store

START_TIMEOUT_S = 30.0
"""How long ``serving`` waits for the server to listen before it gives up."""


class _Runner:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            await self.stop.wait()
        finally:
            await self.server.close()

    def request_stop(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)


@contextmanager
def serving(config: ServerConfig, store: Store | None = None) -> Iterator[Server]:
    """Run ``Server(config, store)`` in a thread for the duration of the block.

    >>> with serving(ServerConfig(root=".", port=0)) as server:  # doctest: +SKIP
    ...     url = server.urls[0]
    """
    runner = _Runner(Server(config, store))
    thread = threading.Thread(target=runner.run, name="ftransfer-server", daemon=True)
    thread.start()
    if not runner.ready.wait(START_TIMEOUT_S):
        raise TimeoutError(f"the server did not start within {START_TIMEOUT_S:g} s")
    if runner.error is not None:
        thread.join()
        raise runner.error
    try:
        yield runner.server
    finally:
        runner.request_stop()
        thread.join()
