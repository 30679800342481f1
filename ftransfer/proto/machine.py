"""The one API of every datagram core, and the transition tables they run on.

Theory of operation
-------------------
Every datagram protocol here (the UDP mode's client request and server endpoint,
TFTP's sender, receiver and client) is a sans-IO core with aioquic's five calls::

    receive_datagram(data, addr, now)   a datagram arrived from addr
    datagrams_to_send(now)              [(bytes, addr), ...] to transmit now
    next_event()                        what happened (proto/events.py), or None
    get_timer()                         the one absolute deadline, or None
    handle_timer(now)                   the deadline came

``now`` is always a parameter (seconds on any monotonic clock), randomness comes in
as a ``random.Random``-like object, and nothing here reads a clock, a socket or a
file. So one pump (io/datagram.py, asyncio), one blocking runner (io/threaded.py)
and the simulator (testing/sim.py, virtual time) drive any of them, and no caller
reaches into a core's lists.

*State as data.* Each core keeps its state in an ``Enum`` and moves only through
a ``Machine``: a table ``(state, trigger) -> state``. A trigger the table does not
list is refused: a *local* one (the application called ``finish`` twice, or
``abort`` after the end) raises ``LocalProtocolError`` and leaves the machine in
its ``error`` state, which refuses all further work (h11's rule); a trigger from
the network that does not apply (a FIN after the verdict, a stray RESULT) is
ignored, because on UDP junk is weather, not a violation: the core counts it.
docs/architecture.md draws the diagrams from these tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from ..errors import LocalProtocolError

TYPE_CHECKING = False  # importing typing costs every command ~6 ms (_records.py)
if TYPE_CHECKING:
    from typing import Any, Protocol

    from .events import DatagramEvent

    Address = tuple[str, int]

    class DatagramCore(Protocol):
        """What every datagram core offers (see the module docstring)."""

        def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None: ...

        def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...

        def next_event(self) -> DatagramEvent | object | None: ...

        def get_timer(self) -> float | None: ...

        def handle_timer(self, now: float) -> None: ...


class Machine:
    """A state that changes only as its transition table allows."""

    __slots__ = ("_error", "_local", "_table", "name", "state")

    def __init__(
        self,
        name: str,
        table: Mapping[tuple[Enum, Enum], Enum],
        initial: Enum,
        *,
        local: frozenset[Enum],
        error: Enum,
    ) -> None:
        self.name, self.state = name, initial
        self._table, self._local, self._error = table, local, error

    def can(self, trigger: Enum) -> bool:
        """Whether ``trigger`` applies now."""
        return (self.state, trigger) in self._table

    def go(self, trigger: Enum) -> bool:
        """Apply ``trigger``: True if the state moved; False for a network trigger
        that does not apply now (ignored). A local one that does not apply raises."""
        if self.state is self._error:
            raise LocalProtocolError(f"{self.name} failed earlier and does no more work")
        nxt = self._table.get((self.state, trigger))
        if nxt is None:
            if trigger in self._local:
                was = self.state
                self.state = self._error
                raise LocalProtocolError(
                    f"{self.name}: {trigger.name.lower()} is not allowed while {was.name.lower()}"
                )
            return False
        self.state = nxt
        return True


def mermaid(name: str, table: Mapping[Any, Enum], initial: Enum) -> str:
    """A Mermaid state diagram of a transition table (docs/architecture.md is made
    from these by tools/diagrams.py). A trigger is an ``Enum`` member or, in the TCP
    tables, the event class that moves the state."""
    lines = ["stateDiagram-v2", f"    %% {name}", f"    [*] --> {initial.name}"]
    for (state, trigger), nxt in table.items():
        label = trigger.name.lower() if isinstance(trigger, Enum) else _class_name(trigger)
        lines.append(f"    {state.name} --> {nxt.name}: {label}")
    return "\n".join(lines)


def _class_name(trigger: object) -> str:
    return str(getattr(trigger, "__name__", trigger))
