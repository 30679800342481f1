"""Debug tracing of what the client does: off (and free) unless asked for.

Theory of operation
-------------------
``ftransfer -v`` (``--verbose``) and an API user who calls ``enable()`` see, one
line each, what a network engineer asks first: where the client connected and in
how long, the TLS version, cipher and the server's fingerprint, how it was
trusted, every request sent and every reply read (by frame, not file bytes), each
UDP request's session, chunk size and window, and its link figures at the end.
Secrets never appear: a LOGIN shows the user, a ticket its id.

Off, a call site costs one test of ``ON`` (the message is not even built), and
nothing is imported: start-up is part of the product. ``enable()`` without a
sink sends the lines to the ``ftransfer.client`` logger at DEBUG level.
"""

from __future__ import annotations

import time
from collections.abc import Callable

ON = False
"""Whether tracing is on (read it before building a message)."""
_sink: list[Callable[[str], None]] = []
_started = time.monotonic()


def enable(sink: Callable[[str], None] | None = None) -> None:
    """Trace to ``sink`` (default: the ``ftransfer.client`` logger, DEBUG)."""
    global ON
    if sink is None:
        import logging

        sink = logging.getLogger("ftransfer.client").debug
    _sink[:] = [sink]
    ON = True


def disable() -> None:
    global ON
    _sink.clear()
    ON = False


def say(message: str) -> None:
    """One line of trace (call only when ``ON``)."""
    for sink in _sink:
        sink(message)


def to_stderr(message: str) -> None:
    """The CLI's sink: stderr, with the milliseconds since the process began."""
    import sys

    elapsed = (time.monotonic() - _started) * 1000
    sys.stderr.write(f"ftransfer: debug: {elapsed:8.1f} ms: {message}\n")
