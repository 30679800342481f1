"""The TFTP transfer table's admission rule, without sockets, threads or a clock.

Theory of operation
-------------------
TFTP cannot validate an address before it answers (protocol.md T3), so the table
of transfers is capped, in all and per client address, and a full table makes
room the way a SYN cache does: the oldest transfer whose peer never answered
(*unproven*: it may be a spoofed request) is evicted, first within the
requester's address when that one is at its cap, then in all. A transfer whose
peer has answered is never evicted; if every one in the way is proven, the
request is refused ("server busy").

``admit`` reserves a slot for an address *before* its transfer exists (opening
its socket may fail: ``cancel`` gives the slot back); ``insert`` then files the
transfer, and ``remove`` frees it when it ends. The caller (server/tftp.py) holds
its lock around every call and tells each evicted transfer to stop. Being pure,
the rule is tested on its own: whether a peer has answered is whatever the test
says, so thread scheduling cannot change an outcome.
"""

from __future__ import annotations

import collections
from typing import Generic, Protocol, TypeVar

Address = tuple[str, int]


class Slot(Protocol):
    """What the table needs to know of a transfer."""

    @property
    def peer(self) -> Address: ...

    @property
    def started(self) -> float: ...

    @property
    def proven(self) -> bool:
        """The peer has answered (an ACK or DATA from its address)."""
        ...


T = TypeVar("T", bound=Slot)


class TransferTable(Generic[T]):
    """Transfers by peer address, at most ``max_total`` and ``max_per_host`` per IP."""

    def __init__(self, *, max_total: int, max_per_host: int) -> None:
        self.max_total, self.max_per_host = max_total, max_per_host
        self._transfers: dict[Address, T] = {}
        self._per_host: collections.Counter[str] = collections.Counter()
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._transfers)

    def get(self, peer: Address) -> T | None:
        return self._transfers.get(peer)

    def transfers(self) -> list[T]:
        return list(self._transfers.values())

    def admit(self, peer: Address) -> list[T] | None:
        """Reserve a slot for ``peer``: the transfers evicted to make room (the
        caller stops them), or None if the request must be refused."""
        host = peer[0]
        evicted: list[T] = []
        if self._per_host[host] >= self.max_per_host:
            victim = self._oldest_unproven(host)
            if victim is None:
                self.refused += 1
                return None
            evicted.append(self._evict(victim))
        if self._reserved() >= self.max_total:  # (not after an eviction above: that made room)
            victim = self._oldest_unproven(None)
            if victim is None:
                self.refused += 1
                return None
            evicted.append(self._evict(victim))
        self._per_host[host] += 1
        return evicted

    def cancel(self, peer: Address) -> None:
        """Give back a reservation whose transfer could not be made."""
        self._release(peer[0])

    def insert(self, transfer: T) -> None:
        """File the transfer a reservation was made for."""
        self._transfers[transfer.peer] = transfer

    def remove(self, transfer: T) -> bool:
        """Free an ended transfer's slot; False if it is not in the table (evicted)."""
        if self._transfers.get(transfer.peer) is not transfer:
            return False
        del self._transfers[transfer.peer]
        self._release(transfer.peer[0])
        return True

    # ---- internals ------------------------------------------------------------------

    def _reserved(self) -> int:
        return sum(self._per_host.values())

    def _oldest_unproven(self, host: str | None) -> T | None:
        unproven = [
            t
            for t in self._transfers.values()
            if not t.proven and (host is None or t.peer[0] == host)
        ]
        return min(unproven, key=lambda t: t.started) if unproven else None

    def _evict(self, victim: T) -> T:
        del self._transfers[victim.peer]
        self._release(victim.peer[0])
        self.evicted += 1
        return victim

    def _release(self, host: str) -> None:
        self._per_host[host] -= 1
        if self._per_host[host] <= 0:
            del self._per_host[host]
