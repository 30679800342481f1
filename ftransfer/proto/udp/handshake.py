"""UDP handshake (sans-IO): address validation, session table, client request.

Theory of operation
-------------------
Address validation (what keeps the server from being a reflector): the server
holds no state for an unvalidated address. An INITIAL without a valid cookie gets a
RETRY carrying ``cookie = HMAC-SHA256(secret, address | nonce | time bucket)[:16]
+ bucket``; only an INITIAL that echoes it, from the same address, within two
COOKIE_BUCKET_S buckets, creates a session. The client pads INITIAL to 1,200 bytes
and a RETRY is under 100, so until validation the server sends well under 3x what
it received, and a spoofed source gets one small RETRY per datagram it was sent.

Sessions: a validated INITIAL yields a ``RequestReceived`` for the application
(server.py decides what the request may do) and, once it calls ``accept`` or
``refuse``, an ACCEPT carrying a fresh random 64-bit session id. Datagrams are
routed by session id *and* source address: a forged id, or a right id from another
address, is dropped and counted without touching the session. A repeated INITIAL
(the ACCEPT was lost) gets the same ACCEPT again, and a sending session that has
had no ack resends its first flight at once: the client dropped it, not knowing
the session yet. The table is bounded by
``max_sessions`` in all and ``max_per_address`` per client IP; over either, a
validated client gets an ACCEPT coded 41 (busy) at once.

PING is answered with a PONG of the same size, to the source address only: no
amplification.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Protocol

from ...errors import Busy
from .packets import (
    Accept,
    Initial,
    Operation,
    Packet,
    PacketError,
    Ping,
    Pong,
    Retry,
    decode_data,
    decode_untrusted,
    encode,
)
from .session import ReadChunk, Session, SessionConfig

COOKIE_BUCKET_S = 30.0
"""Cookies are valid in the bucket they were made in and the next one."""
WINDOW_BYTES = 8 * 1024 * 1024
"""A session's reorder buffer holds at most this many bytes (window x chunk size)."""
ACCEPT_MEMORY_S = 30.0
"""How long an ACCEPT is remembered, to repeat it for a repeated INITIAL."""
HANDSHAKE_RTO_S = 0.25
"""First INITIAL retransmission timeout before any RTT is known (doubles each time; a
spurious retry costs one 1,200-byte INITIAL and one small RETRY)."""
HANDSHAKE_MAX_RTO_S = 1.0
"""INITIAL is retried at least this often: each try needs two datagrams to survive, so
on a 20 % lossy link sparse retries would often exhaust the give-up time."""
HANDSHAKE_RTT_FACTOR = 3.0
HANDSHAKE_MIN_RTO_S = 0.05
"""Once a RETRY has measured the round trip, the cookie-bearing INITIAL is retried
after 3x that (QUIC's first PTO: one sample, rttvar = sample / 2), never sooner than
50 ms: on a 40 ms path a lost ACCEPT then costs 120 ms instead of 500 (measured in
the simulator: 1 in 3 seeds at 5 % loss lost half a second here)."""

Address = tuple[str, int]


class Rng(Protocol):
    def getrandbits(self, k: int, /) -> int: ...


def _address_bytes(address: Address) -> bytes:
    return f"{address[0]}|{address[1]}".encode()


def make_cookie(secret: bytes, address: Address, nonce: int, now: float) -> bytes:
    bucket = int(now // COOKIE_BUCKET_S) & 0xFFFFFFFF
    return _cookie(secret, address, nonce, bucket)


def _cookie(secret: bytes, address: Address, nonce: int, bucket: int) -> bytes:
    message = _address_bytes(address) + struct.pack(">QI", nonce, bucket)
    return hmac.new(secret, message, hashlib.sha256).digest()[:16] + struct.pack(">I", bucket)


def cookie_valid(secret: bytes, cookie: bytes, address: Address, nonce: int, now: float) -> bool:
    if len(cookie) != 20:
        return False
    (bucket,) = struct.unpack(">I", cookie[16:])
    current = int(now // COOKIE_BUCKET_S) & 0xFFFFFFFF
    if bucket not in (current, (current - 1) & 0xFFFFFFFF):
        return False
    return hmac.compare_digest(cookie, _cookie(secret, address, nonce, bucket))


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    """A validated client asks for something; answer with accept() or refuse()."""

    address: Address
    initial: Initial


@dataclass(slots=True)
class EndpointStats:
    corrupt: int = 0
    stray: int = 0
    retries: int = 0
    pings: int = 0


class ServerEndpoint:
    """The server side of UDP: one socket's worth of sessions."""

    def __init__(
        self,
        *,
        secret: bytes,
        rng: Rng,
        config: SessionConfig,
        max_sessions: int,
        max_per_address: int | None = None,
    ) -> None:
        self.secret, self.rng, self.config, self.max_sessions = secret, rng, config, max_sessions
        self.max_per_address = max_per_address or max_sessions
        self.stats = EndpointStats()
        self.sessions: dict[int, tuple[Address, Session]] = {}
        self.requests: list[RequestReceived] = []
        self.outbox: list[tuple[bytes, Address]] = []
        self._accepts: dict[tuple[Address, int], tuple[int, bytes, float]] = {}

    def receive(self, datagram: bytes | memoryview, address: Address, now: float) -> None:
        """One datagram from ``address``: decode, validate, route."""
        data = decode_data(datagram)
        if data is not None:
            entry = self.sessions.get(data[0])
            if entry is None or entry[0] != address:
                self.stats.stray += 1
            else:
                entry[1].receive_data(data[1], data[2], data[3], now)
            return
        try:
            packet = decode_untrusted(datagram)
        except PacketError:
            self.stats.corrupt += 1
            return
        body = packet.body
        if isinstance(body, Initial):
            self._on_initial(body, address, now)
        elif isinstance(body, Ping):
            self.stats.pings += 1
            pong = Pong(seq=body.seq, timestamp_ns=body.timestamp_ns, padding=body.padding)
            self.outbox.append((encode(0, pong), address))
        else:
            entry = self.sessions.get(packet.session)
            if entry is None or entry[0] != address:
                self.stats.stray += 1
                return
            entry[1].receive(packet, now)

    def _on_initial(self, initial: Initial, address: Address, now: float) -> None:
        while self._accepts:  # insertion order is time order: expire from the front
            key, (_sid, _datagram, expires) = next(iter(self._accepts.items()))
            if expires > now:
                break
            del self._accepts[key]
        known = self._accepts.get((address, initial.nonce))
        if known is not None:
            self.outbox.append((known[1], address))  # our ACCEPT was lost: repeat it
            entry = self.sessions.get(known[0])
            if entry is not None:
                entry[1].on_request_repeated(now)
            return
        if not cookie_valid(self.secret, initial.cookie, address, initial.nonce, now):
            self.stats.retries += 1
            cookie = make_cookie(self.secret, address, initial.nonce, now)
            self.outbox.append((encode(0, Retry(nonce=initial.nonce, cookie=cookie)), address))
            return
        same_host = sum(1 for a, _s in self.sessions.values() if a[0] == address[0])
        if len(self.sessions) >= self.max_sessions or same_host >= self.max_per_address:
            self.refuse(
                RequestReceived(address=address, initial=initial),
                code=Busy.code,
                message="too many sessions, try later",
                now=now,
            )
            return
        self.requests.append(RequestReceived(address=address, initial=initial))

    def _accept_datagram(
        self, request: RequestReceived, session_id: int, accept: Accept, now: float
    ) -> bytes:
        datagram = encode(session_id, accept)
        key = (request.address, request.initial.nonce)
        self._accepts[key] = (session_id, datagram, now + ACCEPT_MEMORY_S)
        self.outbox.append((datagram, request.address))
        return datagram

    def accept(
        self,
        request: RequestReceived,
        *,
        size: int,
        mtime_ns: int,
        now: float,
        read_chunk: ReadChunk | None,
    ) -> Session:
        """Start the session: the server sends ``size`` bytes if ``read_chunk`` is given,
        else it receives the client's ``initial.size`` bytes."""
        initial = request.initial
        chunk = min(max(initial.chunk_bytes, 512), self.config.chunk_bytes)
        session_id = self.rng.getrandbits(64) or 1
        sending = read_chunk is not None
        window = max(16, min(self.config.window, WINDOW_BYTES // chunk))
        config = SessionConfig(
            chunk_bytes=chunk,
            window=initial.window if sending else window,
            give_up_s=self.config.give_up_s,
            cc=self.config.cc,
        )
        session = Session(
            session_id=session_id,
            size=size if sending else initial.size,
            sending=sending,
            config=config,
            now=now,
            read_chunk=read_chunk,
        )
        self.sessions[session_id] = (request.address, session)
        accept = Accept(
            nonce=initial.nonce,
            code=0,
            chunk_bytes=chunk,
            window=window,
            size=size,
            mtime_ns=mtime_ns,
            message="",
        )
        self._accept_datagram(request, session_id, accept, now)
        return session

    def refuse(self, request: RequestReceived, *, code: int, message: str, now: float) -> None:
        """Answer a request with a final code: an error, or 0 for REMOVE's success."""
        accept = Accept(
            nonce=request.initial.nonce,
            code=code,
            chunk_bytes=0,
            window=0,
            size=0,
            mtime_ns=0,
            message=message,
        )
        self._accept_datagram(request, 0, accept, now)

    def forget(self, session_id: int) -> None:
        """Drop a finished session; later datagrams for it count as stray."""
        self.sessions.pop(session_id, None)

    def get_timer(self) -> float | None:
        """The earliest deadline of any session."""
        timers = [t for _a, s in self.sessions.values() if (t := s.get_timer()) is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Run the timers of every session whose deadline has come."""
        for _address, session in list(self.sessions.values()):
            deadline = session.get_timer()
            if deadline is not None and deadline <= now:
                session.handle_timer(now)


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """The server accepted the request; a transfer of ``size`` bytes follows (or not)."""

    size: int
    mtime_ns: int
    chunk_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """The server answered with a final code (an error, or 0 for a REMOVE done)."""

    code: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeTimedOut:
    """No answer to INITIAL within give_up_s."""


class ClientRequest:
    """The client side: INITIAL (again with the server's cookie), ACCEPT, then a Session."""

    def __init__(
        self,
        *,
        operation: Operation,
        path: str,
        size: int,
        mtime_ns: int,
        config: SessionConfig,
        rng: Rng,
        now: float,
        read_chunk: ReadChunk | None = None,
    ) -> None:
        self.operation, self.path, self.config = operation, path, config
        self.size, self.mtime_ns, self._read_chunk = size, mtime_ns, read_chunk
        self.nonce = rng.getrandbits(64)
        self.cookie = b""
        self.session: Session | None = None
        self.events: list[Accepted | Refused | HandshakeTimedOut] = []
        self.corrupt = 0
        self.stray = 0
        self._started = now
        self._initial_at = now
        self._retransmitted = False
        self._rto = HANDSHAKE_RTO_S
        self._retry_at = now + self._rto
        self._outbox = [self._initial()]
        self._over = False

    def _initial(self) -> bytes:
        return encode(
            0,
            Initial(
                nonce=self.nonce,
                operation=self.operation,
                chunk_bytes=self.config.chunk_bytes,
                window=self.config.window,
                cookie=self.cookie,
                size=self.size,
                mtime_ns=self.mtime_ns,
                path=self.path,
            ),
        )

    def receive(self, datagram: bytes | memoryview, now: float) -> None:
        data = decode_data(datagram)
        if data is not None and self.session is not None:
            if data[0] == self.session.session_id:
                self.session.receive_data(data[1], data[2], data[3], now)
            else:
                self.stray += 1
            return
        try:
            packet = decode_untrusted(datagram)
        except PacketError:
            self.corrupt += 1
            return
        if self.session is not None:
            if packet.session == self.session.session_id:
                self.session.receive(packet, now)
            else:
                self.stray += 1
            return
        self._handshake(packet, now)

    def _handshake(self, packet: Packet, now: float) -> None:
        body = packet.body
        if isinstance(body, Retry) and body.nonce == self.nonce and not self._over:
            if not self.cookie and not self._retransmitted:  # Karn: an unambiguous sample
                rtt = HANDSHAKE_RTT_FACTOR * (now - self._initial_at)
                self._rto = min(max(rtt, HANDSHAKE_MIN_RTO_S), HANDSHAKE_RTO_S)
            self.cookie = body.cookie
            self._outbox.append(self._initial())
            self._initial_at, self._retransmitted = now, False
            self._retry_at = now + self._rto
        elif isinstance(body, Accept) and body.nonce == self.nonce and not self._over:
            self._over = True
            if body.code or packet.session == 0:
                self.events.append(Refused(code=body.code, message=body.message))
                return
            self._start(packet.session, body, now)
        else:
            self.stray += 1

    def _start(self, session_id: int, accept: Accept, now: float) -> None:
        sending = self.operation is Operation.PUT
        config = SessionConfig(
            chunk_bytes=accept.chunk_bytes,
            window=accept.window if sending else self.config.window,
            give_up_s=self.config.give_up_s,
            cc=self.config.cc,
        )
        size = self.size if sending else accept.size
        self.session = Session(
            session_id=session_id,
            size=size,
            sending=sending,
            config=config,
            now=now,
            read_chunk=self._read_chunk if sending else None,
        )
        if not self._retransmitted:  # Karn: only an INITIAL sent once gives a sample
            self.session.rtt.on_sample(now - self._initial_at)
        self.events.append(
            Accepted(size=accept.size, mtime_ns=accept.mtime_ns, chunk_bytes=accept.chunk_bytes)
        )

    def datagrams(self, now: float) -> list[bytes]:
        out, self._outbox = self._outbox, []
        if self.session is not None:
            out += self.session.datagrams(now)
        return out

    def get_timer(self) -> float | None:
        if self.session is not None:
            return self.session.get_timer()
        return None if self._over else self._retry_at

    def handle_timer(self, now: float) -> None:
        if self.session is not None:
            self.session.handle_timer(now)
            return
        if self._over or now < self._retry_at:
            return
        if now - self._started >= self.config.give_up_s:
            self._over = True
            self.events.append(HandshakeTimedOut())
            return
        self._outbox.append(self._initial())
        self._retransmitted = True
        self._rto = min(self._rto * 2, HANDSHAKE_MAX_RTO_S)
        self._retry_at = now + self._rto
