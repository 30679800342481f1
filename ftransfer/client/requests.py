"""The three requests a client call yields, and what every call module shares.

A call (client/calls.py, client/batch.py) is a generator of these; ``Client`` and
``AsyncClient`` carry them out (client/__init__.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator

from .._records import Record
from ..errors import NotSupported
from .urls import Url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    from .tcp import Op, TcpLogic
    from .tftp import TftpCall
    from .udp import UdpCall

    T = TypeVar("T")

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


def not_supported(url: Url, what: str) -> NotSupported:
    better = "tcp://" if url.scheme == "udp" else "tcp:// or udp://"
    return NotSupported(f"{url.scheme}://{url.address}: cannot {what} (use {better})")


def tcp(make: Callable[[TcpLogic], Op[object]]) -> Generator[Request, object, object]:
    return (yield RunTcp(make=make))
