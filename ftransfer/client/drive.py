"""Carrying out what a generator asks for: the one loop under both client flavours.

Theory of operation
-------------------
The client's logic is written once, as generators that yield requests (a call's
``RunTcp``/``RunUdp``/``RunTftp`` in calls.py, a TCP operation's socket
primitives in tcp.py) and are sent the answers. ``drive`` runs such a generator
with a blocking ``perform``, ``drive_async`` with an awaitable one. Whatever
``perform`` raises, KeyboardInterrupt included, is thrown back into the generator
at the point that asked, so the logic's own ``try``/``finally`` cleans up (removes
a temporary, marks a connection broken) before the error leaves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    R = TypeVar("R")
    T = TypeVar("T")


def drive(logic: Generator[R, object, T], perform: Callable[[R], object]) -> T:
    """Run ``logic`` to its end, answering each request with ``perform``."""
    answer: object = None
    error: BaseException | None = None
    while True:
        try:
            request = logic.throw(error) if error is not None else logic.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result
        error = None
        try:
            answer = perform(request)
        except BaseException as exc:  # back into the logic, which cleans up
            error = exc


async def drive_async(
    logic: Generator[R, object, T], perform: Callable[[R], Awaitable[object]]
) -> T:
    """``drive`` with an awaitable ``perform`` (the asyncio flavour)."""
    answer: object = None
    error: BaseException | None = None
    while True:
        try:
            request = logic.throw(error) if error is not None else logic.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result
        error = None
        try:
            answer = await perform(request)
        except BaseException as exc:  # back into the logic, which cleans up
            error = exc
