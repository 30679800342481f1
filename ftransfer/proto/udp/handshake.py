"""UDP client request (sans-IO): INITIAL, RETRY's cookie, ACCEPT, then a session.

Theory of operation
-------------------
A client request is a datagram core (machine.py) for one request to one server::

    REQUESTING --retry--> VALIDATING --accepted--> OPEN --ended--> DONE
         \\________________ refused / timed out / aborted _________/

The client sends INITIAL, padded to 1,200 bytes, and retries it until a RETRY or
an ACCEPT, or its give-up time: first after 250 ms, doubling, at least once a
second (each try needs two datagrams to survive a lossy path). A RETRY carries the
server's cookie: the client repeats INITIAL with it, and since a RETRY to an
INITIAL sent once is a clean round-trip sample, that retry waits 3x the measured
RTT (QUIC's first PTO), at least 50 ms. An ACCEPT with code 0 and a session id
starts the ``Session`` (session.py) that moves the bytes; one with a non-zero
code is the server's refusal (``Failed``), and one with code 0 and no session is
the success of a request that moves nothing (REMOVE).

After the ACCEPT everything is the session's: its events come out of
``next_event``, ``finish`` gives it the verdict on a download and ``abort`` ends
it and tells the server (a CLOSE, so the server frees the session at once: an
interrupted client, a killed command).
"""

from __future__ import annotations

import collections
from enum import Enum

from ...errors import Aborted, ResumeRefused, TransferTimeout
from ..events import Accepted, Completed, Failed
from ..machine import Machine
from ..ratelimit import Limits, bucket, limits
from .packets import (
    Accept,
    Initial,
    Operation,
    PacketError,
    Resumption,
    Retry,
    decode_data,
    decode_untrusted,
    encode,
)
from .session import ReadChunk, Session, SessionConfig, SessionEvent, State, shifted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from ...checksum import Hasher

    class Rng(Protocol):
        def getrandbits(self, k: int, /) -> int: ...

    class ResumePlan(Protocol):
        """What a resumable request offers, and how it starts once accepted."""

        @property
        def offer(self) -> Resumption | None: ...

        def begin(self, accept: Accept) -> tuple[int, Hasher | None]:
            """Where the session's data start in the file (-1: the server's offer is
            unusable, the request ends with ResumeRefused) and, for an upload, the
            hasher that knows the chunks before."""
            ...


Address = tuple[str, int]

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


class HandshakeState(Enum):
    REQUESTING = "requesting"
    VALIDATING = "validating"
    OPEN = "open"
    DONE = "done"
    ERROR = "error"


class HandshakeTrigger(Enum):
    RETRY = "RETRY received (the cookie)"
    ACCEPTED = "ACCEPT code 0 with a session"
    ANSWERED = "ACCEPT with a final code (refused, or done)"
    TIMED_OUT = "no answer within give_up_s"
    ENDED = "the session ended"
    ABORT = "abort()"


H, HT = HandshakeState, HandshakeTrigger
TRANSITIONS: dict[tuple[Enum, Enum], Enum] = {
    (H.REQUESTING, HT.RETRY): H.VALIDATING,
    (H.VALIDATING, HT.RETRY): H.VALIDATING,
    **{
        (state, trigger): nxt
        for state in (H.REQUESTING, H.VALIDATING)
        for trigger, nxt in (
            (HT.ACCEPTED, H.OPEN),
            (HT.ANSWERED, H.DONE),
            (HT.TIMED_OUT, H.DONE),
            (HT.ABORT, H.DONE),
        )
    },
    (H.OPEN, HT.ENDED): H.DONE,
    (H.OPEN, HT.ABORT): H.DONE,
    (H.DONE, HT.ABORT): H.DONE,
}


RESUME_MISMATCH = "the server's partial is not of this file: starting over"


class ClientRequest:
    """One request from the client's side (a datagram core)."""

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
        server: Address,
        read_chunk: ReadChunk | None = None,
        mode: int | None = None,
        exclusive: bool = False,
        max_rate: int | None = None,
        limits: Limits | None = None,
        resume: ResumePlan | None = None,
    ) -> None:
        """``max_rate``: the client's rate limit, in bytes per second: told to the
        server for a download (INITIAL), kept by our pacer for an upload (with the
        server's, from ACCEPT). ``resume``: a resumable transfer (its offer goes in
        INITIAL; what the server accepts decides where the session starts)."""
        self.operation, self.path, self.config, self.server = operation, path, config, server
        self.size, self.mtime_ns, self._read_chunk = size, mtime_ns, read_chunk
        self.mode, self.exclusive, self.max_rate = mode, exclusive, max_rate
        self._own_limits = limits
        self._resume = resume
        """The client's own buckets when they outlive this request (one limit for
        every file of a command); else one is made from ``max_rate``."""
        self.nonce = rng.getrandbits(64)
        self.cookie = b""
        self.session: Session | None = None
        self.machine = Machine(
            "udp request", TRANSITIONS, H.REQUESTING, local=frozenset({HT.ABORT}), error=H.ERROR
        )
        self.corrupt = 0
        self.stray = 0
        self.heard = False
        """The server has answered at least once (an ICMP error after that is noise)."""
        self._events: collections.deque[SessionEvent | Accepted] = collections.deque()
        self._started = now
        self._initial_at = now
        self._retransmitted = False
        self._rto = HANDSHAKE_RTO_S
        self._retry_at = now + self._rto
        self._outbox = [self._initial()]
        self._sent_once = False

    @property
    def state(self) -> HandshakeState:
        state = self.machine.state
        assert isinstance(state, HandshakeState)
        return state

    @property
    def finished(self) -> bool:
        """The request is over and every event has been taken."""
        return self.state in (H.DONE, H.ERROR) and not self._events

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
                mode=self.mode,
                exclusive=self.exclusive,
                max_rate=self.max_rate if self.operation is not Operation.PUT else None,
                resume=self._resume.offer if self._resume is not None else None,
            ),
        )

    # ---- the datagram-core API ----------------------------------------------------

    def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        session = self.session
        fields = decode_data(data)
        if fields is not None and session is not None:
            if fields[0] == session.session_id:
                session.receive_data(fields[1], fields[2], fields[3], now)
            else:
                self.stray += 1
            self._after_session(session)
            return
        try:
            session_id, body = decode_untrusted(data)
        except PacketError:
            self.corrupt += 1
            return
        if session is not None:
            if session_id == session.session_id:
                session.receive(body, now)
                self._after_session(session)
            else:
                self.stray += 1
            return
        self._handshake(session_id, body, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        if out and not self._sent_once:
            # The first INITIAL leaves now, not when the request was made: what a
            # client does in between (imports, a socket, the TLS ticket) is no part
            # of the round trip the ACCEPT measures (it was: 9-18 ms of "RTT" on
            # loopback, the first sample of every sealed download).
            self._sent_once = True
            self._initial_at = now
            self._retry_at = now + self._rto
        if self.session is not None:
            out += self.session.datagrams(now)
            self._after_session(self.session)
        server = self.server
        return [(datagram, server) for datagram in out]

    def next_event(self) -> SessionEvent | Accepted | None:
        if self._events:
            return self._events.popleft()
        if self.session is not None:
            event = self.session.next_event()
            self._after_session(self.session)
            return event
        return None

    def get_timer(self) -> float | None:
        if self.session is not None:
            return self.session.get_timer()
        if self.state in (H.REQUESTING, H.VALIDATING):
            return self._retry_at
        return None

    def handle_timer(self, now: float) -> None:
        if self.session is not None:
            self.session.handle_timer(now)
            self._after_session(self.session)
            return
        if self.state not in (H.REQUESTING, H.VALIDATING) or now < self._retry_at:
            return
        if now - self._started >= self.config.give_up_s:
            self.machine.go(HT.TIMED_OUT)
            message = f"no answer from the server over UDP in {self.config.give_up_s:g} s"
            self._events.append(Failed(code=TransferTimeout.code, message=message))
            return
        self._outbox.append(self._initial())
        self._retransmitted = True
        self._rto = min(self._rto * 2, HANDSHAKE_MAX_RTO_S)
        self._retry_at = now + self._rto

    # ---- local decisions ------------------------------------------------------------

    def finish(self, *, code: int, message: str, digest: bytes, now: float) -> None:
        """The verdict on a download's EndReceived (code 0: committed)."""
        if self.session is None:
            self.machine.go(HT.ABORT)  # raises: there is nothing to finish
            return
        self.session.finish(code=code, message=message, digest=digest, now=now)

    def abort(self, *, code: int = Aborted.code, message: str = "aborted by the client") -> None:
        """End the request now; an open session tells the server with CLOSE."""
        if self.session is not None:
            self.session.abort(code=code, message=message)
        self.machine.go(HT.ABORT)

    # ---- internals --------------------------------------------------------------------

    def _after_session(self, session: Session) -> None:
        if session.state in (State.DONE, State.ERROR) and self.state is H.OPEN:
            self.machine.go(HT.ENDED)

    def _handshake(self, session_id: int, body: object, now: float) -> None:
        pending = self.state in (H.REQUESTING, H.VALIDATING)
        if isinstance(body, Retry) and body.nonce == self.nonce and pending:
            self.heard = True
            if not self.cookie and not self._retransmitted:  # Karn: an unambiguous sample
                rtt = HANDSHAKE_RTT_FACTOR * (now - self._initial_at)
                self._rto = min(max(rtt, HANDSHAKE_MIN_RTO_S), HANDSHAKE_RTO_S)
            self.machine.go(HT.RETRY)
            self.cookie = body.cookie
            self._outbox.append(self._initial())
            self._initial_at, self._retransmitted = now, False
            self._retry_at = now + self._rto
        elif isinstance(body, Accept) and body.nonce == self.nonce and pending:
            self.heard = True
            if body.code or session_id == 0:
                self.machine.go(HT.ANSWERED)
                self._events.append(
                    Failed(code=body.code, message=body.message) if body.code else Completed()
                )
                return
            self._start(session_id, body, now)
        else:
            self.stray += 1

    def _sending_limits(self, accept: Accept, now: float) -> Limits | None:
        """Ours (shared, or this request's) and the server's, from its ACCEPT."""
        theirs = bucket(accept.max_rate, now)
        if self._own_limits is not None:
            return limits(*self._own_limits.buckets, theirs)
        return limits(bucket(self.max_rate, now), theirs)

    def _start(self, session_id: int, accept: Accept, now: float) -> None:
        sending = self.operation is Operation.PUT
        config = SessionConfig(
            chunk_bytes=accept.chunk_bytes,
            window=accept.window if sending else self.config.window,
            give_up_s=self.config.give_up_s,
            cc=self.config.cc,
            linger_rtos=self.config.linger_rtos,
            limits=self._sending_limits(accept, now) if sending else None,
        )
        self.machine.go(HT.ACCEPTED)
        start, hasher = 0, None
        if self._resume is not None:
            start, hasher = self._resume.begin(accept)
        read_chunk = self._read_chunk if sending else None
        if read_chunk is not None and start > 0:
            read_chunk = shifted(read_chunk, start)
        self.session = Session(
            session_id=session_id,
            size=max(0, (self.size if sending else accept.size) - max(start, 0)),
            sending=sending,
            config=config,
            now=now,
            read_chunk=read_chunk,
            hasher=hasher,
        )
        if start < 0:  # (the server holds other bytes than ours, or offers nonsense)
            code, message = getattr(self._resume, "refusal", (ResumeRefused.code, RESUME_MISMATCH))
            self.session.abort(code=code, message=message)
        if not self._retransmitted:  # Karn: only an INITIAL sent once gives a sample
            self.session.rtt.on_sample(now - self._initial_at)
        self._events.append(
            Accepted(
                size=accept.size,
                mtime_ns=accept.mtime_ns,
                mode=accept.mode,
                chunk_bytes=accept.chunk_bytes,
                offset=max(start, 0),
            )
        )
