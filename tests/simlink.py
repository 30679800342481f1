"""A seeded, simulated network on virtual time for the sans-IO UDP core.

``Link`` is one direction of a path: a bottleneck of ``rate`` bytes/s with a
drop-tail queue of ``queue_bytes``, then ``delay`` (+ uniform jitter); before the
queue, datagrams may be lost (independently, or in Gilbert bursts), duplicated,
corrupted (one bit flipped), or held back (reordered); during a blackhole window
everything is lost. Every choice comes from one ``random.Random(seed)``, so a run
is exactly repeatable.

``Transfer`` runs one client request against a ``ServerEndpoint`` with an
in-memory file store, jumping time from event to event.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ftransfer.checksum import digest_bytes
from ftransfer.proto.endpoint import (
    ClientRequest,
    HandshakeTimedOut,
    Refused,
    RequestReceived,
    ServerEndpoint,
)
from ftransfer.proto.packets import DEFAULT_CHUNK_BYTES, Operation
from ftransfer.proto.udp import DataArrived, FinArrived, Finished, Session, SessionConfig, TimedOut
from ftransfer.relay import ImpairedPath, Impairment

CLIENT = ("192.0.2.1", 40000)
SERVER = ("192.0.2.2", 9021)


@dataclass
class LinkConfig:
    rate: float = 12.5e6
    """Bottleneck, bytes/s (12.5e6 = 100 Mbit/s)."""
    delay: float = 0.020
    jitter: float = 0.0
    queue_bytes: int = 1_000_000
    loss: float = 0.0
    burst: float = 0.0
    """Probability that a loss starts a burst (Gilbert model)."""
    dup: float = 0.0
    reorder: float = 0.0
    """Probability a datagram is held back by 1..3 extra delays of jitter/delay."""
    corrupt: float = 0.0
    blackholes: list[tuple[float, float]] = field(default_factory=list)
    drop_once: Callable[[bytes], bool] | None = None
    """Drops the first datagram this returns True for (to lose exactly one on purpose)."""
    drop: Callable[[bytes], bool] | None = None
    """Drops every datagram this returns True for (to lose a chosen few on purpose)."""

    def impairment(self) -> Impairment:
        return Impairment(
            loss=self.loss,
            burst=self.burst,
            dup=self.dup,
            reorder=self.reorder,
            corrupt=self.corrupt,
            delay_s=self.delay,
            jitter_s=self.jitter,
            rate_bytes_per_s=self.rate,
            queue_bytes=self.queue_bytes,
        )


@dataclass
class LinkStats:
    offered: int = 0
    offered_bytes: int = 0
    delivered: int = 0
    dropped_queue: int = 0
    dropped_random: int = 0


class Link:
    """The relay's impairment model (``ImpairedPath``) on virtual time, plus
    blackholes, drop-once and drop for tests that lose exactly what they mean to."""

    def __init__(self, config: LinkConfig, rng: random.Random) -> None:
        self.config = config
        self.path = ImpairedPath(config.impairment(), rng)
        self.stats = LinkStats()
        self._extra_drops = 0
        self._arrivals: list[tuple[float, int, bytes]] = []
        self._order = 0

    def send(self, datagram: bytes, now: float) -> None:
        self.stats.offered += 1
        self.stats.offered_bytes += len(datagram)
        if self._dropped_on_purpose(datagram, now):
            self._extra_drops += 1
        else:
            for arrival, copy in self.path.admit(datagram, now):
                self._order += 1
                heapq.heappush(self._arrivals, (arrival, self._order, copy))
        self.stats.dropped_random = self.path.dropped_random + self._extra_drops
        self.stats.dropped_queue = self.path.dropped_queue

    def _dropped_on_purpose(self, datagram: bytes, now: float) -> bool:
        once = self.config.drop_once
        if once is not None and once(datagram):
            self.config.drop_once = None
            return True
        if self.config.drop is not None and self.config.drop(datagram):
            return True
        return any(a <= now < b for a, b in self.config.blackholes)

    def next_time(self) -> float | None:
        return self._arrivals[0][0] if self._arrivals else None

    def due(self, now: float) -> list[bytes]:
        out = []
        while self._arrivals and self._arrivals[0][0] <= now:
            out.append(heapq.heappop(self._arrivals)[2])
        self.stats.delivered += len(out)
        return out


@dataclass
class Outcome:
    code: int | None = None
    message: str = ""
    data: bytes = b""
    timed_out: bool = False
    seconds: float = 0.0
    events: list[object] = field(default_factory=list)


class MemoryServer:
    """The server application: files in a dict, verdicts like server.py's."""

    def __init__(self, endpoint: ServerEndpoint, files: dict[str, bytes]) -> None:
        self.endpoint, self.files = endpoint, files
        self._uploads: dict[int, tuple[str, bytearray]] = {}
        self._sessions: list[Session] = []

    def step(self, now: float) -> None:
        while self.endpoint.requests:
            self._handle(self.endpoint.requests.pop(0), now)
        for session_id, (_addr, session) in list(self.endpoint.sessions.items()):
            for event in session.events:
                self._on_event(session_id, session, event, now)
            session.events.clear()

    def _handle(self, request: RequestReceived, now: float) -> None:
        initial = request.initial
        if initial.operation is Operation.PUT:
            session = self.endpoint.accept(request, size=0, mtime_ns=-1, now=now, read_chunk=None)
            self._uploads[session.session_id] = (initial.path, bytearray())
        elif initial.operation is Operation.GET and initial.path in self.files:
            data = self.files[initial.path]
            self.endpoint.accept(
                request,
                size=len(data),
                mtime_ns=0,
                now=now,
                read_chunk=lambda off, n: data[off : off + n],
            )
        else:
            self.endpoint.refuse(request, code=10, message="not found", now=now)

    def _on_event(self, session_id: int, session: Session, event: object, now: float) -> None:
        if isinstance(event, DataArrived):
            self._uploads[session_id][1].extend(event.data)
        elif isinstance(event, FinArrived):
            name, data = self._uploads.pop(session_id)
            if digest_bytes(bytes(data)) == event.digest and len(data) == event.size:
                self.files[name] = bytes(data)
                session.finish(code=0, message="", digest=event.digest, now=now)
            else:
                session.finish(code=30, message="digest mismatch", digest=bytes(16), now=now)


class Transfer:
    """One client request over a pair of simulated links."""

    def __init__(
        self,
        *,
        seed: int,
        up: LinkConfig,
        down: LinkConfig,
        files: dict[str, bytes] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        window: int = 4096,
        give_up_s: float = 10.0,
        cc: str = "bbr",
    ) -> None:
        rng = random.Random(seed)
        self.up, self.down = Link(up, rng), Link(down, rng)
        self.config = SessionConfig(
            chunk_bytes=chunk_bytes, window=window, give_up_s=give_up_s, cc=cc
        )
        self.endpoint = ServerEndpoint(
            secret=b"test-secret", rng=rng, config=self.config, max_sessions=8
        )
        self.server = MemoryServer(self.endpoint, files if files is not None else {})
        self.rng = rng
        self.now = 0.0

    def run(
        self, operation: Operation, path: str, data: bytes = b"", limit_s: float = 600.0
    ) -> Outcome:
        client = ClientRequest(
            operation=operation,
            path=path,
            size=len(data),
            mtime_ns=-1,
            config=self.config,
            rng=self.rng,
            now=self.now,
            read_chunk=lambda off, n: data[off : off + n],
        )
        outcome = Outcome()
        received = bytearray()
        steps = 0
        while outcome.code is None and not outcome.timed_out:
            steps += 1
            assert steps < 5_000_000, "simulation does not converge"
            self._exchange(client)
            self._client_events(client, outcome, received)
            if outcome.code is not None or outcome.timed_out:
                break
            self.now = self._next_time(client)
            assert self.now <= limit_s, f"no outcome after {limit_s} virtual seconds"
        outcome.data, outcome.seconds = bytes(received), self.now
        self._drain(client)
        return outcome

    def _exchange(self, client: ClientRequest) -> None:
        now = self.now
        for datagram in self.down.due(now):
            client.receive(datagram, now)
        for datagram in self.up.due(now):
            self.endpoint.receive(datagram, CLIENT, now)
        timer = client.get_timer()
        if timer is not None and timer <= now:
            client.handle_timer(now)
        self.endpoint.handle_timer(now)
        self.server.step(now)
        for datagram in client.datagrams(now):
            self.up.send(datagram, now)
        self._server_out(now)

    def _server_out(self, now: float) -> None:
        for datagram, _addr in self.endpoint.outbox:
            self.down.send(datagram, now)
        self.endpoint.outbox.clear()
        for _addr, session in list(self.endpoint.sessions.values()):
            for datagram in session.datagrams(now):
                self.down.send(datagram, now)

    def _client_events(self, client: ClientRequest, outcome: Outcome, received: bytearray) -> None:
        for event in client.events:
            outcome.events.append(event)
            if isinstance(event, Refused):
                outcome.code, outcome.message = event.code, event.message
            elif isinstance(event, HandshakeTimedOut):
                outcome.timed_out = True
        client.events.clear()
        session = client.session
        if session is None:
            return
        for event in session.events:
            if isinstance(event, DataArrived):
                received.extend(event.data)
            elif isinstance(event, FinArrived):
                ok = digest_bytes(bytes(received)) == event.digest
                session.finish(code=0 if ok else 30, message="", digest=event.digest, now=self.now)
            elif isinstance(event, Finished):
                outcome.code, outcome.message = event.code, event.message
            elif isinstance(event, TimedOut):
                outcome.timed_out = True
        session.events.clear()

    def _next_time(self, client: ClientRequest) -> float:
        times = [
            self.up.next_time(),
            self.down.next_time(),
            client.get_timer(),
            self.endpoint.get_timer(),
        ]
        pending = [t for t in times if t is not None]
        assert pending, "deadlock: nothing scheduled"
        return max(min(pending), self.now + 1e-7)

    def _drain(self, client: ClientRequest) -> None:
        """Let in-flight datagrams and lingering sessions play out (bounded)."""
        for _ in range(10_000):
            nxt = [
                t
                for t in (self.up.next_time(), self.down.next_time(), self.endpoint.get_timer())
                if t is not None
            ]
            if not nxt:
                return
            self.now = max(min(nxt), self.now + 1e-7)
            self._exchange(client)
            self.server.step(self.now)
