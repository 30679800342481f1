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

The call's handlers run inside the driver's callbacks, where asyncio would log
an exception and drop it ("Exception in callback") while the transfer ran on. So
an exception there (a sink's ``OutputClosed``, ENOSPC, a refused target) is kept,
the call is told it is abandoned, the wait ends, and the coroutine raises it: the
same error the blocking ``Client`` raises from its own loop.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from ..errors import FtransferError
    from ..io.udp import UdpSocket
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


async def run_on_loop(call: DatagramCall, sock: UdpSocket) -> None:
    """Run ``call`` on ``sock`` (non-blocking) until it is over."""
    import asyncio

    from ..io.datagram import CoreDriver

    over = asyncio.get_running_loop().create_future()
    failed: list[Exception] = []

    def fail(exc: Exception) -> None:
        failed.append(exc)
        call.interrupted()  # the abort goes out with the driver's next send
        if not over.done():
            over.set_result(None)

    def on_event(event: object) -> None:
        if failed:
            return  # abandoned: the rest of the batch is moot
        try:
            call.on_event(event)
        except Exception as exc:
            fail(exc)
            return
        if call.over and not over.done():
            over.set_result(None)

    def unreachable() -> None:
        if failed:
            return
        try:
            call.unreachable()
        except Exception as exc:
            fail(exc)
            return
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
    if failed:
        raise failed[0]
