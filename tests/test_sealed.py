"""Sealed UDP (proto/udp/sealed.py): keys, AEAD, replay window, key update, and
whole transfers on virtual time through links that flip, duplicate and lose."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st

from ftransfer.proto.udp.packets import Operation
from ftransfer.proto.udp.sealed import (
    CLIENT_TO_SERVER,
    HEADER,
    REPLAY_WINDOW,
    SALT,
    SEAL_OVERHEAD_BYTES,
    SERVER_TO_CLIENT,
    Opener,
    Sealer,
    SealStats,
    derive,
)
from ftransfer.testing.sim import CLIENT, LinkConfig, Simulation

SECRET = bytes(range(32))
TICKET = 0x0123456789ABCDEF


def _pair(epoch_bits: int = 22) -> tuple[Sealer, Opener, SealStats]:
    stats = SealStats()
    sealer = Sealer(SECRET, CLIENT_TO_SERVER, TICKET, epoch_bits=epoch_bits)
    opener = Opener(SECRET, CLIENT_TO_SERVER, TICKET, stats, epoch_bits=epoch_bits)
    return sealer, opener, stats


# ---- the key schedule -------------------------------------------------------------


def test_derive_is_hkdf_sha256_as_protocol_md_says() -> None:
    import hashlib
    import hmac

    prk = hmac.new(SALT, SECRET, hashlib.sha256).digest()
    for direction in (CLIENT_TO_SERVER, SERVER_TO_CLIENT):
        for epoch in (0, 1, 7):
            info = b"ftransfer " + direction
            suffix = epoch.to_bytes(4, "big")
            key = HKDFExpand(hashes.SHA256(), 16, info + b" key" + suffix).derive(prk)
            iv = HKDFExpand(hashes.SHA256(), 12, info + b" iv" + suffix).derive(prk)
            assert derive(SECRET, direction, epoch) == (key, iv)


def test_the_test_vector_in_protocol_md() -> None:
    key, iv = derive(SECRET, CLIENT_TO_SERVER, 0)
    sealed = Sealer(SECRET, CLIENT_TO_SERVER, TICKET).seal(b"hello")
    assert key.hex() == VECTOR_KEY and iv.hex() == VECTOR_IV
    assert sealed.hex() == VECTOR_SEALED


VECTOR_KEY = "269ce6ec404e6810fcd87ee1967f23c7"
VECTOR_IV = "c3aa9cf84a48b6c74f0066d8"
VECTOR_SEALED = "f80123456789abcdef000000000000000078ae17d2cac82147366c93e62d954f0629c5a9ca8d"
"""secret 00 01 .. 1f, ticket 0x0123456789abcdef, c2s, pn 0, inner b"hello": the
key schedule is checked against cryptography's HKDF above, the seal is its AES-GCM."""


def test_directions_and_epochs_have_their_own_keys() -> None:
    keys = {derive(SECRET, d, e) for d in (CLIENT_TO_SERVER, SERVER_TO_CLIENT) for e in range(4)}
    assert len(keys) == 8


# ---- sealing and opening ----------------------------------------------------------


def test_a_sealed_datagram_opens_to_what_was_sealed() -> None:
    sealer, opener, stats = _pair()
    inner = bytes(range(256)) * 5
    sealed = sealer.seal(inner)
    assert len(sealed) == len(inner) + SEAL_OVERHEAD_BYTES
    assert inner not in sealed  # encrypted
    assert opener.open(sealed) == inner and stats.opened == 1


@pytest.mark.parametrize("position", [0, 1, 9, 16, 17, 40, -1])
def test_a_flipped_bit_anywhere_is_dropped_and_counted(position: int) -> None:
    sealer, opener, stats = _pair()
    sealed = bytearray(sealer.seal(b"x" * 100))
    sealed[position] ^= 0x01
    assert opener.open(bytes(sealed)) is None
    assert stats.dropped == 1 and stats.opened == 0


def test_a_truncated_datagram_is_dropped() -> None:
    sealer, opener, stats = _pair()
    sealed = sealer.seal(b"x" * 100)
    for cut in (0, 5, SEAL_OVERHEAD_BYTES - 1, SEAL_OVERHEAD_BYTES, len(sealed) - 1):
        assert opener.open(sealed[:cut]) is None
    assert stats.dropped == 5 and stats.opened == 0


def test_a_replayed_datagram_is_dropped_once_it_has_opened() -> None:
    sealer, opener, stats = _pair()
    first, second = sealer.seal(b"a"), sealer.seal(b"b")
    assert opener.open(second) == b"b"
    assert opener.open(first) == b"a"  # reordered, still inside the window
    assert opener.open(first) is None and opener.open(second) is None
    assert stats.replayed == 2


def test_a_datagram_older_than_the_window_is_dropped() -> None:
    sealer, opener, stats = _pair()
    old = sealer.seal(b"old")
    for _ in range(REPLAY_WINDOW):
        last = sealer.seal(b"new")
    assert opener.open(last) == b"new"
    assert opener.open(old) is None and stats.replayed == 1


def test_a_forgery_does_not_move_the_window() -> None:
    sealer, opener, stats = _pair()
    genuine = sealer.seal(b"g")
    forged = bytearray(HEADER.pack(0xF8, TICKET, 10**6) + bytes(40))
    assert opener.open(bytes(forged)) is None and stats.forged == 1
    assert opener.largest == -1
    assert opener.open(genuine) == b"g"


def test_another_ticket_or_direction_does_not_open() -> None:
    _sealer, opener, stats = _pair()
    other_ticket = Sealer(SECRET, CLIENT_TO_SERVER, TICKET + 1).seal(b"x")
    other_direction = Sealer(SECRET, SERVER_TO_CLIENT, TICKET).seal(b"x")
    other_secret = Sealer(bytes(32), CLIENT_TO_SERVER, TICKET).seal(b"x")
    for datagram in (other_ticket, other_direction, other_secret):
        assert opener.open(datagram) is None
    assert stats.stray == 1 and stats.forged == 2


def test_keys_change_by_epoch_and_both_sides_follow() -> None:
    sealer, opener, stats = _pair(epoch_bits=3)  # new keys every 8 datagrams
    datagrams = [sealer.seal(bytes([i]) * 20) for i in range(40)]
    assert {len(d) for d in datagrams} == {20 + SEAL_OVERHEAD_BYTES}
    assert [opener.open(d) for d in datagrams] == [bytes([i]) * 20 for i in range(40)]
    assert stats.opened == 40
    same_position = Sealer(SECRET, CLIENT_TO_SERVER, TICKET, epoch_bits=22)
    plain_keys = [same_position.seal(bytes([i]) * 20) for i in range(40)]
    assert plain_keys[:8] == datagrams[:8] and plain_keys[8] != datagrams[8]


def test_an_epoch_far_ahead_is_not_derived() -> None:
    sealer, opener, stats = _pair(epoch_bits=3)
    sealer.next_pn = 8 * 5  # epoch 5, while the opener has seen nothing (epoch 0)
    assert opener.open(sealer.seal(b"x")) is None and stats.forged == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_opened_or_dropped_never_raised(data: bytes) -> None:
    _sealer, opener, stats = _pair()
    assert opener.open(data) is None
    assert stats.dropped == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2000), st.integers(0, 255), st.binary(min_size=1, max_size=64))
def test_any_change_to_a_sealed_datagram_is_dropped(position: int, xor: int, inner: bytes) -> None:
    sealer, opener, _stats = _pair()
    sealed = bytearray(sealer.seal(inner))
    position %= len(sealed)
    sealed[position] ^= xor or 1
    assert opener.open(bytes(sealed)) is None


# ---- whole transfers on virtual time -----------------------------------------------


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _sim(link: LinkConfig, epoch_bits: int | None = None) -> Simulation:
    return Simulation(seed=7, up=link, down=link, sealed=True, epoch_bits=epoch_bits)


@pytest.mark.parametrize(
    "link",
    [
        LinkConfig(),
        LinkConfig(loss=0.05),
        LinkConfig(corrupt=0.03, dup=0.03, reorder=0.05, jitter=0.005),
    ],
    ids=["clean", "loss5", "corrupt-dup-reorder"],
)
def test_a_sealed_put_and_get_are_byte_exact(link: LinkConfig) -> None:
    data = _payload(600_000, 1)
    sim = _sim(link)
    put = sim.run(Operation.PUT, "up.bin", data)
    assert put.code == 0, put.message
    assert sim.files["up.bin"] == data
    assert sim.seal is not None
    if link.corrupt:
        assert sim.sealed is not None
        assert sim.seal.stats.forged + sim.sealed.stats.forged > 0
    if link.dup:
        assert sim.sealed is not None and sim.sealed.stats.replayed > 0
    assert sim.endpoint.stats.retries == 0  # the ticket validated the address: no cookie
    got = sim.run(Operation.GET, "up.bin")
    assert got.code == 0 and got.data == data


def test_nothing_of_the_file_crosses_the_link_in_the_clear() -> None:
    pattern = b"FTRANSFER-KNOWN-PATTERN-" * 60
    data = pattern * 20
    sim = _sim(LinkConfig())
    captured: list[bytes] = []
    for link in (sim.up, sim.down):
        send = link.send

        def record(datagram: bytes, now: float, send: object = send) -> None:
            captured.append(datagram)
            send(datagram, now)  # type: ignore[operator]

        link.send = record  # type: ignore[method-assign]
    assert sim.run(Operation.PUT, "p.bin", data).code == 0
    assert sim.run(Operation.GET, "p.bin").data == data
    assert len(captured) > 40
    assert not any(b"FTRANSFER-KNOWN" in d or b"p.bin" in d for d in captured)


def test_keys_change_mid_transfer_and_the_file_stays_exact() -> None:
    data = _payload(400_000, 2)
    sim = _sim(LinkConfig(loss=0.02), epoch_bits=5)  # new keys every 32 datagrams
    assert sim.run(Operation.PUT, "k.bin", data).code == 0
    assert sim.files["k.bin"] == data
    assert sim.sealed is not None and sim.sealed.stats.opened > 5 * 32  # several epochs


def test_a_plaintext_request_to_a_sealed_server_is_refused() -> None:
    sim = _sim(LinkConfig())
    sim.sealed = None  # the client sends plaintext; the server still requires sealing
    outcome = sim.run(Operation.GET, "missing.bin")
    assert outcome.code == 3 and "encrypts UDP" in outcome.message


def test_a_ticket_is_bound_to_the_address_of_its_first_datagram() -> None:
    sim = _sim(LinkConfig())
    data = _payload(50_000, 3)
    assert sim.run(Operation.PUT, "a.bin", data).code == 0
    sealed = sim.sealed
    assert sealed is not None and sealed.channels == 1 and sealed.tickets_pending == 0
    ticket = next(iter(sealed._channels))
    replay = Sealer(b"\x00" * 32, CLIENT_TO_SERVER, ticket).seal(b"x" * 30)
    before = sealed.stats.stray
    sealed.receive_datagram(replay, ("192.0.2.99", CLIENT[1]), sim.now)  # another address
    assert sealed.stats.stray == before + 1
    sealed.receive_datagram(b"\x01" + bytes(40), CLIENT, sim.now)  # plaintext, sealed peer
    assert sealed.stats.stray == before + 2
