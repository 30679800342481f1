"""UDP server endpoint (sans-IO): address validation, requests, the session table.

Theory of operation
-------------------
Address validation (what keeps the server from being a reflector): the server
holds no state for an unvalidated address. An INITIAL without a valid cookie gets a
RETRY carrying ``cookie = HMAC-SHA256(secret, address | nonce | time bucket)[:16]
+ bucket``; only an INITIAL that echoes it, from the same address, within two
COOKIE_BUCKET_S buckets, creates a session. An INITIAL must be padded to 1,200
bytes (a shorter one is dropped) and a RETRY is under 100, so until validation the
server sends well under 3x what it received, and a spoofed source gets one small
RETRY per datagram it was sent.
A sealed INITIAL (sealed.py) is validated by its ticket instead: it opened under
keys only a logged-in TLS client holds, so no cookie round trip is needed.

Requests: a validated INITIAL is checked (a known operation, a window of at least
one chunk, a chunk size from 512 to 65,000, an mtime_ns of -1 or more: otherwise
it is refused at once with code 1 and the reason, so a client never waits for
nothing), then reported as
``RequestReceived``; the application (server/udp.py) answers with ``accept``,
``refuse`` or ``done``, which send an ACCEPT carrying a fresh random 64-bit
session id (or a final code). Datagrams are routed by session id *and* source
address: a forged id, or a right id from another address, is dropped and counted
without touching the session. A repeated INITIAL (the ACCEPT was lost) gets the
same ACCEPT again, and a sending session that has had no ack resends its first
flight at once; one repeated while the application is still deciding is
ignored (the one answer serves both).

Caps: sessions are bounded by ``max_sessions`` in all and ``max_per_address`` per
client IP, and a request holds its slot from the moment it is handed to the
application until it is answered (``accept`` turns the slot into the session;
``refuse`` and ``done`` free it), so neither a batch of INITIALs nor LIST and
STAT answers still being built can take more than the caps; over either, a
validated client gets an ACCEPT coded 41 (busy) at once. The ACCEPTs remembered
for repeats are bounded too (``max_remembered`` in all, a host's share of it per
IP): when that memory is full, a validated request gets 41 without being
remembered, so a flood of requests costs the server no memory.

The endpoint is a datagram core (machine.py): sessions' events come out of
``next_event`` tagged with their session id, and a session that has ended and
whose events were taken is forgotten after its last datagrams leave.

PING is answered with a PONG of the same size, to the source address only: no
amplification.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import struct

from ..._records import Record
from ...checksum import Hasher
from ...errors import Busy, RemoteProtocolError
from ..ratelimit import Limits
from ..rtt import RttEstimator
from .handshake import Address
from .packets import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    MIN_INITIAL_BYTES,
    Accept,
    Initial,
    Operation,
    PacketError,
    Ping,
    Pong,
    Resumption,
    Retry,
    decode_data,
    decode_untrusted,
    encode,
)
from .session import ReadChunk, Session, SessionConfig, SessionEvent, shifted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .handshake import Rng

COOKIE_BUCKET_S = 30.0
"""Cookies are valid in the bucket they were made in and the next one."""
WINDOW_BYTES = 8 * 1024 * 1024
"""A session's reorder buffer holds at most this many bytes (window x chunk size)."""
MIN_WINDOW_CHUNKS = 16
"""The receive window offered is never smaller (see congestion.MIN_WINDOW_PACKETS)."""
ACCEPT_MEMORY_S = 30.0
"""How long an ACCEPT is remembered, to repeat it for a repeated INITIAL."""
MAX_REMEMBERED_ACCEPTS = 65536
"""ACCEPTs remembered at once (~20 MB); over it, and over a host's share of it
(max_per_address / max_sessions), a validated request gets code 41, unremembered."""
OPERATIONS = frozenset(int(op) for op in Operation)


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


class RequestReceived(Record):
    """A validated client asks for something: answer with accept, refuse or done."""

    address: Address
    initial: Initial
    principal: object = None
    """Whom a sealed request speaks for (its ticket's principal, sealed.py); None
    for a plaintext request."""

    @property
    def operation(self) -> Operation:
        return Operation(self.initial.operation)


class EndpointStats(Record, frozen=False):
    corrupt: int = 0
    stray: int = 0
    retries: int = 0
    pings: int = 0
    short_initials: int = 0
    refused: int = 0


def request_problem(initial: Initial) -> str | None:
    """Why a validated INITIAL cannot be served, or None."""
    if initial.operation not in OPERATIONS:
        return f"unknown operation {initial.operation}"
    if initial.window < 1:
        return "the receive window must be at least 1 chunk"
    if not MIN_CHUNK_BYTES <= initial.chunk_bytes <= MAX_CHUNK_BYTES:
        return f"chunk size must be from {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES} bytes"
    if initial.operation == Operation.MKDIR and initial.size > 1:
        return "MKDIR's size must be 0 (one directory) or 1 (with its parents)"
    if initial.mtime_ns < -1:
        return f"mtime_ns {initial.mtime_ns} is below -1 (-1: the server's clock)"
    if not initial.path.isascii():
        try:
            initial.path.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes, kept as surrogates
            return "the path is not valid UTF-8"
    return None


def _final_accept(request: RequestReceived, *, code: int, message: str) -> Accept:
    """The ACCEPT that ends a request without a session (a refusal, the success of
    REMOVE or MKDIR)."""
    return Accept(
        nonce=request.initial.nonce,
        code=code,
        chunk_bytes=0,
        window=0,
        size=0,
        mtime_ns=0,
        message=message,
    )


class ServerEndpoint:
    """The server side of UDP: one socket's worth of sessions (a datagram core)."""

    def __init__(
        self,
        *,
        secret: bytes,
        rng: Rng,
        config: SessionConfig,
        max_sessions: int,
        max_per_address: int | None = None,
        max_remembered: int = MAX_REMEMBERED_ACCEPTS,
    ) -> None:
        self.secret, self.rng, self.config, self.max_sessions = secret, rng, config, max_sessions
        self.max_per_address = max_per_address or max_sessions
        self.max_remembered = max_remembered
        self.max_remembered_per_host = max(1, max_remembered * self.max_per_address // max_sessions)
        self.stats = EndpointStats()
        self._sessions: dict[int, tuple[Address, Session]] = {}
        self._events: collections.deque[RequestReceived] = collections.deque()
        self._outbox: list[tuple[bytes, Address]] = []
        self._accepts: dict[tuple[Address, int], tuple[int, bytes, float]] = {}
        self._remembered: collections.Counter[str] = collections.Counter()  # _accepts by host
        self._requests: set[tuple[Address, int]] = set()
        """Requests handed to the application and not yet answered: each holds a slot."""

    # ---- the datagram-core API ----------------------------------------------------

    def receive_datagram(
        self, data: bytes | memoryview, addr: Address, now: float, *, principal: object = None
    ) -> None:
        """One datagram from ``addr``: decode, validate, route. ``principal``: the
        datagram was sealed under a ticket of this principal (sealed.py), which
        validates the address as a cookie would."""
        fields = decode_data(data)
        if fields is not None:
            entry = self._sessions.get(fields[0])
            if entry is None or entry[0] != addr:
                self.stats.stray += 1
            else:
                entry[1].receive_data(fields[1], fields[2], fields[3], now)
            return
        try:
            session_id, body = decode_untrusted(data)
        except PacketError:
            self.stats.corrupt += 1
            return
        if isinstance(body, Initial):
            if len(data) < MIN_INITIAL_BYTES:
                self.stats.short_initials += 1  # not padded: answering could amplify
            else:
                self._on_initial(body, addr, now, principal)
        elif isinstance(body, Ping):
            self.stats.pings += 1
            pong = Pong(seq=body.seq, timestamp_ns=body.timestamp_ns, padding=body.padding)
            self._outbox.append((encode(0, pong), addr))
        else:
            entry = self._sessions.get(session_id)
            if entry is None or entry[0] != addr:
                self.stats.stray += 1
                return
            entry[1].receive(body, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """The endpoint's own datagrams (ACCEPT, RETRY, PONG) first: a new session's
        DATA sent ahead of its ACCEPT would be dropped by a client that has no
        session yet. Then each session's, grouped (one GSO run per session)."""
        out, self._outbox = self._outbox, []
        for session_id, (address, session) in list(self._sessions.items()):
            out.extend((datagram, address) for datagram in session.datagrams(now))
            if session.done:
                del self._sessions[session_id]
        return out

    def next_event(self) -> RequestReceived | SessionEvent | None:
        if self._events:
            return self._events.popleft()
        for _address, session in self._sessions.values():
            event = session.next_event()
            if event is not None:
                return event
        return None

    def get_timer(self) -> float | None:
        """The earliest deadline of any session."""
        timers = [t for _a, s in self._sessions.values() if (t := s.get_timer()) is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Run the timers of every session whose deadline has come."""
        for _address, session in list(self._sessions.values()):
            deadline = session.get_timer()
            if deadline is not None and deadline <= now:
                session.handle_timer(now)

    # ---- requests -------------------------------------------------------------------

    def _on_initial(
        self, initial: Initial, address: Address, now: float, principal: object = None
    ) -> None:
        self._forget_old_accepts(now)
        key = (address, initial.nonce)
        known = self._accepts.get(key)
        if known is not None:
            self._outbox.append((known[1], address))  # our ACCEPT was lost: repeat it
            entry = self._sessions.get(known[0])
            if entry is not None:
                entry[1].on_request_repeated(now)
            return
        if key in self._requests:
            return  # still being decided: its ACCEPT will answer both
        if principal is None and not cookie_valid(
            self.secret, initial.cookie, address, initial.nonce, now
        ):
            self.stats.retries += 1
            cookie = make_cookie(self.secret, address, initial.nonce, now)
            self._outbox.append((encode(0, Retry(nonce=initial.nonce, cookie=cookie)), address))
            return
        request = RequestReceived(address=address, initial=initial, principal=principal)
        host = address[0]
        if (
            len(self._accepts) + len(self._requests) >= self.max_remembered
            or self._remembered[host] >= self.max_remembered_per_host
        ):
            self._busy(request, now, remember=False)  # answered, but costs no memory
            return
        problem = request_problem(initial)
        if problem is not None:
            self.stats.refused += 1
            self.refuse(request, code=RemoteProtocolError.code, message=problem, now=now)
            return
        if self._slots_in_use(host) >= self.max_per_address or self._slots_in_use(None) >= (
            self.max_sessions
        ):
            self._busy(request, now, remember=True)
            return
        self._requests.add(key)  # the slot is held until accept, refuse or done
        self._events.append(request)

    def _slots_in_use(self, host: str | None) -> int:
        """Sessions and undecided requests, of ``host`` or (None) of everyone."""
        if host is None:
            return len(self._sessions) + len(self._requests)
        sessions = sum(1 for a, _s in self._sessions.values() if a[0] == host)
        return sessions + sum(1 for a, _n in self._requests if a[0] == host)

    def _busy(self, request: RequestReceived, now: float, *, remember: bool) -> None:
        accept = _final_accept(request, code=Busy.code, message="too many sessions, try later")
        if remember:
            self._send_accept(request, 0, accept, now)
        else:
            self._outbox.append((encode(0, accept), request.address))

    def _forget_old_accepts(self, now: float) -> None:
        accepts = self._accepts
        while accepts:  # insertion order is time order: expire from the front
            key, (_sid, _datagram, expires) = next(iter(accepts.items()))
            if expires > now:
                break
            del accepts[key]
            self._remembered[key[0][0]] -= 1
            if self._remembered[key[0][0]] <= 0:
                del self._remembered[key[0][0]]

    def _send_accept(
        self, request: RequestReceived, session_id: int, accept: Accept, now: float
    ) -> None:
        datagram = encode(session_id, accept)
        key = (request.address, request.initial.nonce)
        self._requests.discard(key)  # answered: its slot is the session's now, or free
        if key not in self._accepts:
            self._remembered[request.address[0]] += 1
        self._accepts[key] = (session_id, datagram, now + ACCEPT_MEMORY_S)
        self._outbox.append((datagram, request.address))

    def accept(
        self,
        request: RequestReceived,
        *,
        size: int,
        mtime_ns: int,
        now: float,
        read_chunk: ReadChunk | None,
        mode: int | None = None,
        limits: Limits | None = None,
        max_rate: int | None = None,
        resume: Resumption | None = None,
        hasher: Hasher | None = None,
    ) -> int:
        """Start the session; returns its id. The server sends ``size`` bytes read
        with ``read_chunk`` if one is given, else receives the client's
        ``initial.size`` bytes. ``limits``: what a sending session's pacer keeps
        to; ``max_rate``: the most bytes per second the client may send, told in
        ACCEPT (an upload under the server's rate limit). ``resume``: the session
        carries the file's bytes from ``resume.offset`` on (told in ACCEPT); a
        sending one's ``hasher`` knows the chunks before it."""
        initial = request.initial
        start = resume.offset if resume is not None else 0
        chunk = min(initial.chunk_bytes, self.config.chunk_bytes)
        session_id = self.rng.getrandbits(64) or 1
        sending = read_chunk is not None
        window = max(MIN_WINDOW_CHUNKS, min(self.config.window, WINDOW_BYTES // chunk))
        config = SessionConfig(
            chunk_bytes=chunk,
            window=initial.window if sending else window,
            give_up_s=self.config.give_up_s,
            cc=self.config.cc,
            limits=limits if sending else None,
        )
        if start and read_chunk is not None:
            read_chunk = shifted(read_chunk, start)
        session = Session(
            session_id=session_id,
            size=(size if sending else initial.size) - start,
            sending=sending,
            config=config,
            now=now,
            read_chunk=read_chunk,
            hasher=hasher,
        )
        self._sessions[session_id] = (request.address, session)
        accept = Accept(
            nonce=initial.nonce,
            code=0,
            chunk_bytes=chunk,
            window=window,
            size=size,
            mtime_ns=mtime_ns,
            message="",
            mode=mode,
            max_rate=None if sending else max_rate,
            resume=resume,
        )
        self._send_accept(request, session_id, accept, now)
        return session_id

    def refuse(self, request: RequestReceived, *, code: int, message: str, now: float) -> None:
        """Answer a request with an error: the request is over."""
        self._send_accept(request, 0, _final_accept(request, code=code, message=message), now)

    def done(self, request: RequestReceived, *, now: float) -> None:
        """Answer a request that needs no transfer (REMOVE) with success."""
        self._send_accept(request, 0, _final_accept(request, code=0, message=""), now)

    # ---- sessions -------------------------------------------------------------------

    def session(self, session_id: int) -> Session | None:
        entry = self._sessions.get(session_id)
        return entry[1] if entry is not None else None

    def finish(
        self, session_id: int, *, code: int, message: str, digest: bytes, now: float
    ) -> None:
        """The verdict on a session's EndReceived (an upload: code 0 committed)."""
        session = self.session(session_id)
        if session is not None:
            session.finish(code=code, message=message, digest=digest, now=now)

    def abort(self, session_id: int, *, code: int, message: str) -> None:
        """End a session now, telling the client (a storage failure mid-upload)."""
        session = self.session(session_id)
        if session is not None:
            session.abort(code=code, message=message)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def rtt_of(self, session_id: int) -> RttEstimator | None:
        session = self.session(session_id)
        return session.rtt if session is not None else None
