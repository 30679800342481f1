"""A datagram call (UDP or TFTP) on the asyncio loop, for ``AsyncClient``.

Theory of operation
-------------------
A UDP or TFTP request is a *call*: an application object (``UdpCall``,
``TftpCall``) that owns a sans-IO core and handles its events. The blocking
``Client`` runs a call on a blocking socket (io/threaded.py); ``AsyncClient``
runs it here, under the one asyncio driver every datagram core shares
(io/datagram.py). The call is over when the call says so, or as soon as an ICMP
"port unreachable" has become its error. Before returning, the driver steps once
more so that the core's last datagrams (the final ACK, the RESULT, the CLOSE)
leave; on cancellation the call is told first (``interrupted``), so what goes out
is the abort.
"""

from __future__ import annotations

import socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from ..errors import FtransferError
    from ..proto.machine import DatagramCore

    class DatagramCall(Protocol):
        """What both datagram calls offer the runner."""

        @property
        def core(self) -> DatagramCore: ...

        @property
        def over(self) -> bool: ...

        @property
        def error(self) -> FtransferError | None: ...

        def on_event(self, event: object) -> None: ...

        def unreachable(self) -> None: ...

        def interrupted(self) -> None: ...

        def finish(self) -> None: ...


async def run_on_loop(call: DatagramCall, sock: socket.socket) -> None:
    """Run ``call`` on ``sock`` (non-blocking) until it is over."""
    import asyncio

    from ..io.datagram import CoreDriver

    over = asyncio.get_running_loop().create_future()

    def on_event(event: object) -> None:
        call.on_event(event)
        if call.over and not over.done():
            over.set_result(None)

    def unreachable() -> None:
        call.unreachable()
        if call.error is not None and not over.done():
            over.set_result(None)

    sock.setblocking(False)
    driver = CoreDriver(call.core, sock, on_event, on_unreachable=unreachable)
    try:
        driver.step()
        await over
        driver.step()  # the last ACK, RESULT or CLOSE goes out before we leave
    except BaseException:
        call.interrupted()
        driver.step()
        raise
    finally:
        call.finish()
        driver.close()
