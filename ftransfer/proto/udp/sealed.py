"""Sealed UDP (sans-IO): every datagram encrypted and authenticated with AES-128-GCM.

Theory of operation
-------------------
The keys come from the authenticated TLS connection, the pattern of Aspera FASP
and UDR (an authenticated control channel hands the data channel a fresh secret):
a logged-in client asks for a *ticket* over TCP (TICKET / TICKET_OK,
protocol.md 4.2) and gets a random 64-bit ticket id and a 32-byte secret. Python's
``ssl`` cannot export TLS keying material (RFC 5705), so the secret travels inside
the TLS stream. From the secret, HKDF-SHA256 (RFC 5869) derives one key and one
IV per direction and *epoch*::

    prk = HMAC-SHA256(salt = "ftransfer udp v1", secret)
    key = HKDF-Expand(prk, "ftransfer c2s key" | epoch u32, 16)    (and "s2c")
    iv  = HKDF-Expand(prk, "ftransfer c2s iv"  | epoch u32, 12)

A sealed datagram is ``0xF8 | ticket u64 | pn u64 | AES-128-GCM(inner) | tag 16``:
the 17-byte header is the associated data, and ``inner`` is the datagram the
plaintext mode would send, unchanged (one codec for both modes). Each direction
numbers its datagrams from 0 and never reuses a number: a retransmission is a new
datagram with a new number, so ``nonce = iv XOR pn`` (QUIC's construction,
RFC 9001 5.3) is never repeated under one key. The epoch is ``pn >> 22``: the keys
change every 4,194,304 datagrams (about 5.8 GB of 1,400-byte payloads), half of
AES-GCM's confidentiality limit of 2**23 packets per key (RFC 9001 6.6), and both
sides know when without a signal. A receiver derives only the epochs next to the
newest it has authenticated, so forged numbers cost it no key derivations.

The receiver keeps a replay window (RFC 4303's sliding bitmap, 4,096 numbers
wide): a number seen before, or older than the window, is dropped before the
AEAD runs; the window moves only for a datagram that opened. A datagram that fails
authentication, names an unknown ticket, comes from another address than the one
its ticket was bound to, or arrives in plaintext from a sealed peer is dropped
without a reply and counted (``SealStats``): on UDP a forgery is weather, never an
error the user sees, and it never reaches the session.

``ClientSeal`` and ``SealedEndpoint`` are datagram cores (machine.py) that wrap
the plaintext ones: they open what arrives before the inner core sees it and seal
what it sends. On the server, the first datagram that opens with a ticket binds
the ticket to its source address (a ticket is used once); that datagram is
authenticated, so the endpoint skips the cookie round trip for it and the
request speaks for the ticket's principal. Plaintext requests still go through
the cookie (3x anti-amplification cap) and are the application's to refuse.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

from ..._records import Record
from .endpoint import ServerEndpoint
from .handshake import Address

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from ..events import DatagramEvent
    from .endpoint import RequestReceived
    from .handshake import ClientRequest
    from .session import SessionEvent

SEALED_MAGIC = 0xF8
HEADER = struct.Struct(">BQQ")
TAG_BYTES = 16
SEAL_OVERHEAD_BYTES = HEADER.size + TAG_BYTES
"""What sealing adds to a datagram: 33 bytes (1,434 -> 1,467 for a 1,400-byte
payload, inside an IPv4 path's 1,472 bytes of UDP payload)."""
SECRET_BYTES = 32
EPOCH_BITS = 22
"""Keys change every 2**22 datagrams per direction (half AES-GCM's 2**23 limit)."""
REPLAY_WINDOW = 4096
"""Packet numbers this far below the newest are still accepted once."""
TICKET_LIFETIME_S = 60.0
"""A ticket must open its first datagram within this time."""
CHANNEL_IDLE_S = 600.0
"""A bound ticket with no datagram for this long is forgotten (its sessions have
given up long before)."""
MAX_TICKETS = 4096
"""Unused tickets held at once, in all; over it a TICKET is refused (busy)."""
MAX_TICKETS_PER_HOST = 64
SALT = b"ftransfer udp v1"
CLIENT_TO_SERVER = b"c2s"
SERVER_TO_CLIENT = b"s2c"
_AD = HEADER.size
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


def derive(secret: bytes, direction: bytes, epoch: int) -> tuple[bytes, bytes]:
    """The (key, iv) of one direction and epoch (HKDF-SHA256, see the docstring)."""
    prk = hmac.new(SALT, secret, hashlib.sha256).digest()
    suffix = struct.pack(">I", epoch) + b"\x01"  # HKDF-Expand's first block counter
    key = hmac.new(prk, b"ftransfer " + direction + b" key" + suffix, hashlib.sha256).digest()
    iv = hmac.new(prk, b"ftransfer " + direction + b" iv" + suffix, hashlib.sha256).digest()
    return key[:16], iv[:12]


def _aead(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def peek_ticket(data: bytes | memoryview) -> int | None:
    """The ticket id of a sealed datagram, or None if it is not one."""
    if len(data) < SEAL_OVERHEAD_BYTES or data[0] != SEALED_MAGIC:
        return None
    return int(HEADER.unpack_from(data)[1])


class SealStats(Record, frozen=False):
    """Datagrams dropped by the sealing layer, by reason."""

    opened: int = 0
    forged: int = 0
    """Failed authentication (a flipped bit, a wrong key, a truncation)."""
    replayed: int = 0
    """A packet number already seen, or older than the replay window."""
    stray: int = 0
    """An unknown or expired ticket, the wrong source address, or plaintext from a
    sealed peer."""

    @property
    def dropped(self) -> int:
        return self.forged + self.replayed + self.stray


class Sealer:
    """Seals one direction's datagrams under one ticket."""

    def __init__(
        self, secret: bytes, direction: bytes, ticket: int, *, epoch_bits: int = EPOCH_BITS
    ) -> None:
        self.secret, self.direction, self.ticket = secret, direction, ticket
        self.epoch_bits = epoch_bits
        self.next_pn = 0
        # The first epoch's key now, not at the first seal: the AEAD's import and
        # the key schedule (a few ms) must not sit between the moment a datagram
        # is due and the moment it leaves (the handshake takes its RTT sample so).
        key, iv = derive(secret, direction, 0)
        self._aead: AESGCM | None = _aead(key)
        self._iv, self._epoch = int.from_bytes(iv, "big"), 0

    def seal(self, inner: bytes | memoryview) -> bytes:
        pn = self.next_pn
        self.next_pn = pn + 1
        epoch = pn >> self.epoch_bits
        if epoch != self._epoch:
            key, iv = derive(self.secret, self.direction, epoch)
            self._aead, self._iv, self._epoch = _aead(key), int.from_bytes(iv, "big"), epoch
        assert self._aead is not None
        header = HEADER.pack(SEALED_MAGIC, self.ticket, pn)
        nonce = (self._iv ^ pn).to_bytes(12, "big")
        return header + self._aead.encrypt(nonce, inner, header)


class Opener:
    """Opens one direction's datagrams under one ticket, with a replay window."""

    def __init__(
        self,
        secret: bytes,
        direction: bytes,
        ticket: int,
        stats: SealStats,
        *,
        epoch_bits: int = EPOCH_BITS,
    ) -> None:
        self.secret, self.direction, self.ticket = secret, direction, ticket
        self.stats, self.epoch_bits = stats, epoch_bits
        self.largest = -1
        """The newest packet number that opened (-1: none yet)."""
        self._seen = 0  # bit i: largest - i has opened
        self._keys: dict[int, tuple[AESGCM, int]] = {}

    def open(self, data: bytes | memoryview) -> bytes | None:
        """The inner datagram, or None (dropped and counted)."""
        if len(data) < SEAL_OVERHEAD_BYTES:
            self.stats.stray += 1
            return None
        magic, ticket, pn = HEADER.unpack_from(data)
        if magic != SEALED_MAGIC or ticket != self.ticket:
            self.stats.stray += 1
            return None
        if self._replayed(pn):
            self.stats.replayed += 1
            return None
        keys = self._keys_for(pn >> self.epoch_bits)
        if keys is None:
            self.stats.forged += 1
            return None
        aead, iv = keys
        view = memoryview(data)  # no copy: the AEAD reads the buffer in place
        try:
            inner = aead.decrypt((iv ^ pn).to_bytes(12, "big"), view[_AD:], view[:_AD])
        except Exception:  # cryptography's InvalidTag: any bit of it was wrong
            self.stats.forged += 1
            return None
        self._mark(pn)
        self.stats.opened += 1
        return inner

    def _replayed(self, pn: int) -> bool:
        if pn > self.largest:
            return False
        age = self.largest - pn
        return age >= REPLAY_WINDOW or bool(self._seen >> age & 1)

    def _mark(self, pn: int) -> None:
        if pn > self.largest:
            shift = pn - self.largest
            seen = (self._seen << shift) | 1
            self._seen = seen & _WINDOW_MASK if seen >> REPLAY_WINDOW else seen
            self.largest = pn
        else:
            self._seen |= 1 << (self.largest - pn)

    def _keys_for(self, epoch: int) -> tuple[AESGCM, int] | None:
        """The epoch's AEAD and IV, if it is next to the newest epoch that opened."""
        current = max(self.largest, 0) >> self.epoch_bits
        if not current - 1 <= epoch <= current + 1:
            return None
        keys = self._keys.get(epoch)
        if keys is None:
            key, iv = derive(self.secret, self.direction, epoch)
            keys = self._keys[epoch] = (_aead(key), int.from_bytes(iv, "big"))
            for old in [e for e in self._keys if e < current - 1]:
                del self._keys[old]
        return keys


class Ticket(Record):
    """What TICKET_OK hands the client: the id, the secret and how long it lasts."""

    ticket: int
    secret: bytes
    lifetime_s: float

    def __repr__(self) -> str:
        return f"Ticket(ticket={self.ticket:#018x}, secret=<hidden>)"


# ---- the client ---------------------------------------------------------------------


class ClientSeal:
    """A client request's datagram core, sealed (wraps a ``ClientRequest``)."""

    def __init__(
        self, inner: ClientRequest, ticket: Ticket, *, epoch_bits: int = EPOCH_BITS
    ) -> None:
        self.inner = inner
        self.stats = SealStats()
        self._sealer = Sealer(ticket.secret, CLIENT_TO_SERVER, ticket.ticket, epoch_bits=epoch_bits)
        self._opener = Opener(
            ticket.secret, SERVER_TO_CLIENT, ticket.ticket, self.stats, epoch_bits=epoch_bits
        )

    def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        inner = self._opener.open(data)
        if inner is not None:
            self.inner.receive_datagram(inner, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        seal = self._sealer.seal
        return [(seal(datagram), addr) for datagram, addr in self.inner.datagrams_to_send(now)]

    def next_event(self) -> DatagramEvent | object | None:
        return self.inner.next_event()

    def get_timer(self) -> float | None:
        return self.inner.get_timer()

    def handle_timer(self, now: float) -> None:
        self.inner.handle_timer(now)


# ---- the server ---------------------------------------------------------------------


class _Pending(Record):
    ticket: Ticket
    principal: object
    host: str
    expires: float


class _Channel:
    """A ticket bound to the address of its first datagram."""

    def __init__(
        self, pending: _Pending, address: Address, stats: SealStats, epoch_bits: int
    ) -> None:
        ticket = pending.ticket
        self.principal, self.address = pending.principal, address
        self.opener = Opener(
            ticket.secret, CLIENT_TO_SERVER, ticket.ticket, stats, epoch_bits=epoch_bits
        )
        self.sealer = Sealer(ticket.secret, SERVER_TO_CLIENT, ticket.ticket, epoch_bits=epoch_bits)
        self.last_used = 0.0


class TicketBusy(Exception):
    """Too many unused tickets (in all, or of one host)."""


class SealedEndpoint:
    """The server endpoint behind the sealing layer (wraps a ``ServerEndpoint``).

    ``issue`` makes a ticket for a principal (the TCP service calls it for a
    logged-in TLS connection); requests that arrive sealed carry that principal
    as ``RequestReceived.principal``, plaintext ones carry None."""

    def __init__(
        self,
        inner: ServerEndpoint,
        *,
        random_bytes: Callable[[int], bytes],
        epoch_bits: int = EPOCH_BITS,
        max_tickets: int = MAX_TICKETS,
        max_per_host: int = MAX_TICKETS_PER_HOST,
    ) -> None:
        self.inner = inner
        self.stats = SealStats()
        self._random_bytes = random_bytes
        self.epoch_bits, self.max_tickets, self.max_per_host = epoch_bits, max_tickets, max_per_host
        self._pending: dict[int, _Pending] = {}
        self._channels: dict[int, _Channel] = {}
        self._by_address: dict[Address, _Channel] = {}
        self._next_sweep = 0.0
        _aead(bytes(16))  # import the AEAD now, not while a first INITIAL waits (~30 ms)

    # ---- tickets ----------------------------------------------------------------------

    def issue(self, principal: object, host: str, now: float) -> Ticket:
        """A fresh ticket for ``principal``, asked for from ``host``; TicketBusy
        over the caps."""
        self._sweep(now)
        if len(self._pending) >= self.max_tickets:
            raise TicketBusy("too many unused UDP tickets, try later")
        if sum(1 for p in self._pending.values() if p.host == host) >= self.max_per_host:
            raise TicketBusy(f"too many unused UDP tickets for {host}, try later")
        make = self._random_bytes
        while True:
            ticket_id = int.from_bytes(make(8), "big")
            if ticket_id and ticket_id not in self._pending and ticket_id not in self._channels:
                break
        ticket = Ticket(
            ticket=ticket_id, secret=bytes(make(SECRET_BYTES)), lifetime_s=TICKET_LIFETIME_S
        )
        self._pending[ticket_id] = _Pending(
            ticket=ticket, principal=principal, host=host, expires=now + TICKET_LIFETIME_S
        )
        return ticket

    @property
    def tickets_pending(self) -> int:
        return len(self._pending)

    @property
    def channels(self) -> int:
        return len(self._channels)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for ticket_id in [t for t, p in self._pending.items() if p.expires <= now]:
            del self._pending[ticket_id]
        idle = [t for t, c in self._channels.items() if c.last_used + CHANNEL_IDLE_S <= now]
        for ticket_id in idle:
            channel = self._channels.pop(ticket_id)
            if self._by_address.get(channel.address) is channel:
                del self._by_address[channel.address]

    # ---- the datagram-core API --------------------------------------------------------

    def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        ticket_id = peek_ticket(data)
        if ticket_id is None:
            if addr in self._by_address:
                self.stats.stray += 1  # plaintext from a sealed peer: forged
                return
            self.inner.receive_datagram(data, addr, now)
            return
        channel = self._channels.get(ticket_id)
        fresh = channel is None
        if channel is None:
            channel = self._candidate(ticket_id, addr, now)
        if channel is None or channel.address != addr:
            self.stats.stray += 1
            return
        inner = channel.opener.open(data)
        if inner is None:
            return  # counted by the opener
        if fresh:
            self._bind(ticket_id, channel)
        channel.last_used = now
        self.inner.receive_datagram(inner, addr, now, principal=channel.principal)

    def _candidate(self, ticket_id: int, addr: Address, now: float) -> _Channel | None:
        """A channel for a ticket not yet used, bound only if its datagram opens."""
        self._sweep(now)
        pending = self._pending.get(ticket_id)
        if pending is None:
            return None
        return _Channel(pending, addr, self.stats, self.epoch_bits)

    def _bind(self, ticket_id: int, channel: _Channel) -> None:
        """The ticket is used: from now on it is this address's, and only its. A
        later ticket bound from the same address (a port reused) takes it over."""
        del self._pending[ticket_id]
        self._channels[ticket_id] = channel
        self._by_address[channel.address] = channel

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = self.inner.datagrams_to_send(now)
        by_address = self._by_address
        if not by_address:
            return out
        for i, (datagram, addr) in enumerate(out):
            channel = by_address.get(addr)
            if channel is not None:
                channel.last_used = now
                out[i] = (channel.sealer.seal(datagram), addr)
        return out

    def next_event(self) -> RequestReceived | SessionEvent | None:
        return self.inner.next_event()

    def get_timer(self) -> float | None:
        return self.inner.get_timer()

    def handle_timer(self, now: float) -> None:
        self.inner.handle_timer(now)
