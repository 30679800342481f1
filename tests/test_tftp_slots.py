"""The TFTP transfer table's admission rule (server/slots.py), on its own: whether
a peer has answered is what each test says, so no scheduling can change an outcome.
This is where the session cap is tested; test_tftp_integration.py keeps the wiring."""

from __future__ import annotations

from ftransfer.server.slots import Address, TransferTable


class Transfer:
    def __init__(self, peer: Address, started: float, *, proven: bool = False) -> None:
        self.peer, self.started, self.proven = peer, started, proven


def _request(
    table: TransferTable[Transfer], peer: Address, now: float, *, proves: bool
) -> tuple[bool, list[Transfer]]:
    """A request from ``peer``: admitted?, and who was evicted for it. A peer that
    ``proves`` answers our first packet before the next request arrives."""
    evicted = table.admit(peer)
    if evicted is None:
        return False, []
    table.insert(Transfer(peer, now, proven=proves))
    return True, evicted


def test_a_flood_of_proven_peers_fills_the_table_and_the_rest_are_refused() -> None:
    table: TransferTable[Transfer] = TransferTable(max_total=6, max_per_host=64)
    outcomes = [_request(table, ("127.0.0.1", 5000 + i), i, proves=True) for i in range(30)]
    answers = {"data": sum(ok for ok, _e in outcomes), "busy": sum(not ok for ok, _e in outcomes)}
    assert answers == {"data": 6, "busy": 24}
    assert all(evicted == [] for _ok, evicted in outcomes)  # a proven peer is never evicted
    assert len(table) == 6 and table.refused == 24 and table.evicted == 0


def test_a_flood_of_unproven_peers_evicts_the_oldest_each_time() -> None:
    table: TransferTable[Transfer] = TransferTable(max_total=6, max_per_host=64)
    outcomes = [_request(table, ("198.51.100.7", 5000 + i), i, proves=False) for i in range(20)]
    assert all(ok for ok, _e in outcomes)  # a spoofed flood never locks anyone out
    victims = [victim.peer[1] for _ok, evicted in outcomes for victim in evicted]
    assert victims == [5000 + i for i in range(14)]  # oldest first
    assert sorted(t.peer[1] for t in table.transfers()) == [5000 + i for i in range(14, 20)]
    assert table.evicted == 14 and table.refused == 0
    ok, evicted = _request(table, ("192.0.2.1", 1), 99, proves=True)  # a real client
    assert ok and [v.peer[1] for v in evicted] == [5014]


def test_proven_transfers_are_kept_and_only_unproven_ones_make_room() -> None:
    table: TransferTable[Transfer] = TransferTable(max_total=3, max_per_host=64)
    assert _request(table, ("10.0.0.1", 1), 0, proves=True)[0]
    assert _request(table, ("10.0.0.2", 1), 1, proves=False)[0]
    assert _request(table, ("10.0.0.3", 1), 2, proves=True)[0]
    ok, evicted = _request(table, ("10.0.0.4", 1), 3, proves=True)
    assert ok and [v.peer for v in evicted] == [("10.0.0.2", 1)]  # not the older, proven one
    assert _request(table, ("10.0.0.5", 1), 4, proves=True) == (False, [])


def test_the_per_address_cap_evicts_within_that_address_first() -> None:
    table: TransferTable[Transfer] = TransferTable(max_total=10, max_per_host=2)
    assert _request(table, ("10.0.0.9", 1), 0, proves=False)[0]  # another host, the oldest
    assert _request(table, ("10.0.0.1", 1), 1, proves=True)[0]
    assert _request(table, ("10.0.0.1", 2), 2, proves=False)[0]
    ok, evicted = _request(table, ("10.0.0.1", 3), 3, proves=True)
    assert ok and [v.peer for v in evicted] == [("10.0.0.1", 2)]  # its own, not 10.0.0.9's
    assert _request(table, ("10.0.0.1", 4), 4, proves=True) == (False, [])  # both proven
    assert _request(table, ("10.0.0.2", 1), 5, proves=True)[0]  # other hosts still served


def test_slots_come_back_when_a_transfer_ends_or_cannot_start() -> None:
    table: TransferTable[Transfer] = TransferTable(max_total=1, max_per_host=1)
    assert table.admit(("10.0.0.1", 1)) == []
    table.cancel(("10.0.0.1", 1))  # its socket could not be opened
    first = Transfer(("10.0.0.1", 2), 0, proven=True)
    assert table.admit(first.peer) == []
    table.insert(first)
    assert table.admit(("10.0.0.1", 3)) is None
    assert table.remove(first) and not table.remove(first)  # once
    late = Transfer(("10.0.0.2", 1), 1)
    assert table.admit(late.peer) == []
    table.insert(late)
    [evicted] = table.admit(("10.0.0.3", 1)) or []
    assert evicted is late and not table.remove(late)  # its thread ends later: no double free
    assert len(table) == 0 and table.admit(("10.0.0.4", 1)) is None  # 10.0.0.3 holds the slot
