"""A seeded simulation of the UDP mode on virtual time: a client core, the real
server application and operations over a MemoryStore, and two impaired links.

Theory of operation
-------------------
``Simulation`` joins a ``ClientRequest`` (proto/udp/handshake.py) to the server's
own ``UdpApplication`` (server/udp.py: the endpoint core plus ``Operations``, the
same policy and log line as the real server) over a ``MemoryStore``. Each
direction is a ``Link``: netem.py's ``ImpairedPath`` (bottleneck rate and drop-tail
queue, delay and jitter, loss, bursts, duplication, reordering, corruption), plus
blackhole windows and a drop-once hook for tests that lose exactly what they mean
to. Time jumps from one event to the next (an arrival, a core's timer), so a
40 MiB transfer over a 40 ms path takes a second of real time, and every choice
comes from one ``random.Random(seed)``: a run is exactly repeatable. The server's
deferred work (STAT, LIST, a large commit) is done at once, in virtual time.

The client's process can be made imperfect the two ways a real one is. A *stall*
(``run(stalls=...)``): the read of a given byte offset blocks for a while (a cold
disk, a slow progress callback), so what the sender stamped as sent just before it
leaves only after it, and nothing reaches the client core meanwhile; the server
runs on. *Timer slack* (``client_timer_slack_s``): the client wakes for its own
timer that much late, as the blocking driver does (SO_RCVTIMEO counts kernel ticks
and rounds up: measured, a 1 ms wait sleeps 8 ms and a 5 ms one 12 ms on a 250 Hz
kernel); a datagram arriving still wakes it at once.

Both sides are driven through the five calls of proto/machine.py only, as the
asyncio driver and the threaded runner drive them: nothing here reaches into a
core, so what passes here is what runs on a socket.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from .._records import Record, factory
from ..checksum import digest_bytes
from ..proto.events import Accepted, Completed, DataReceived, EndReceived, Failed
from ..proto.udp.endpoint import ServerEndpoint
from ..proto.udp.handshake import ClientRequest
from ..proto.udp.packets import DEFAULT_CHUNK_BYTES, Operation
from ..proto.udp.sealed import ClientSeal, SealedEndpoint
from ..proto.udp.session import SessionConfig
from ..server.operations import Operations, Policy, Principal
from ..server.udp import UdpApplication
from ..storage.memory import MemoryStore
from .netem import ImpairedPath, Impairment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..proto.udp.handshake import ResumePlan

CLIENT = ("192.0.2.1", 40000)
SERVER = ("192.0.2.2", 9021)
MIN_STEP_S = 1e-7
"""Virtual time always moves forward by at least this (no zero-time loops)."""


class LinkConfig(Record, frozen=False):
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
    blackholes: list[tuple[float, float]] = factory(list)
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


class LinkStats(Record, frozen=False):
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


class Outcome(Record, frozen=False):
    """How a simulated request ended."""

    code: int | None = None
    """0: success; else the error code (None while running)."""
    message: str = ""
    data: bytes = b""
    """What the client received (GET, LIST, STAT)."""
    timed_out: bool = False
    seconds: float = 0.0
    events: list[object] = factory(list)
    cut: bool = False
    """The client vanished mid-request (``run(cut=...)``: a kill -9)."""


def _at_once(work: Callable[[], object], then: Callable[[object], None]) -> None:
    try:
        result: object = work()
    except Exception as exc:  # the application decides what an error means
        result = exc
    then(result)


class Simulation:
    """A client and the real server application over two simulated links."""

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
        client_timer_slack_s: float = 0.0,
        sealed: bool = False,
        epoch_bits: int | None = None,
        policy: Policy | None = None,
    ) -> None:
        """``sealed``: every datagram sealed (proto/udp/sealed.py), with a ticket
        issued for a principal who may write, as a TLS connection would fetch it;
        ``epoch_bits`` below the default makes the keys change within a test."""
        rng = random.Random(seed)
        self.now = 0.0
        self._timer_slack = client_timer_slack_s
        self._client_free_at = 0.0  # the client is stalled until then
        self.client_finished_at: float | None = None
        """When the client's request was over, lingering included (then it stops)."""
        self.up, self.down = Link(up, rng), Link(down, rng)
        self.config = SessionConfig(
            chunk_bytes=chunk_bytes, window=window, give_up_s=give_up_s, cc=cc
        )
        self.store = MemoryStore(clock_ns=lambda: int(self.now * 1e9))
        for name, data in (files or {}).items():
            self.store.put_file(name, data)
        self.endpoint = ServerEndpoint(
            secret=b"test-secret", rng=rng, config=self.config, max_sessions=8
        )
        self.app = UdpApplication(
            Operations(self.store, policy or Policy(anonymous_write=not sealed)),
            self.endpoint,
            now=lambda: self.now,
            defer=_at_once,
            plaintext=not sealed,
        )
        self.rng = rng
        self.sealed: SealedEndpoint | None = None
        self.seal: ClientSeal | None = None
        """The last request's sealing layer (its SealStats)."""
        self._server: ServerEndpoint | SealedEndpoint = self.endpoint
        if sealed:
            kwargs = {} if epoch_bits is None else {"epoch_bits": epoch_bits}
            self.sealed = SealedEndpoint(self.endpoint, random_bytes=rng.randbytes, **kwargs)
            self._server = self.sealed
        self._wire: ClientRequest | ClientSeal | None = None

    @property
    def files(self) -> dict[str, bytes]:
        return self.store.files()

    def run(
        self,
        operation: Operation,
        path: str,
        data: bytes = b"",
        limit_s: float = 600.0,
        stalls: dict[int, float] | None = None,
        limit_rate: int | None = None,
        resume: ResumePlan | None = None,
        cut: Callable[[], bool] | None = None,
    ) -> Outcome:
        """One request from start to end; then in-flight datagrams play out.
        ``stalls``: reading the upload's chunk at this byte offset blocks the client
        for this many seconds (the first time only). ``limit_rate``: the client's
        rate limit (bytes per second). ``resume``: a resumable request (its offer,
        and where it starts). ``cut``: once it holds, the client vanishes at once,
        as a killed process does (no CLOSE; the server's session lives on)."""
        pending_stalls = dict(stalls or {})

        def read(offset: int, n: int) -> bytes:
            stall = pending_stalls.pop(offset, 0.0)
            if stall:
                self._client_free_at = max(self._client_free_at, self.now) + stall
            return data[offset : offset + n]

        client = ClientRequest(
            operation=operation,
            path=path,
            size=len(data),
            mtime_ns=-1,
            config=self.config,
            rng=self.rng,
            now=self.now,
            server=SERVER,
            read_chunk=read,
            max_rate=limit_rate,
            resume=resume,
        )
        self._wire = client
        if self.sealed is not None:
            writer = Principal(user="sim", write=True, delete=True)
            ticket = self.sealed.issue(writer, CLIENT[0], self.now)
            self.seal = ClientSeal(client, ticket, epoch_bits=self.sealed.epoch_bits)
            self._wire = self.seal
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
            if cut is not None and cut():
                outcome.cut = True
                outcome.data, outcome.seconds = bytes(received), self.now
                return outcome
            self.now = self._next_time(client)
            assert self.now <= limit_s, f"no outcome after {limit_s} virtual seconds"
        outcome.data, outcome.seconds = bytes(received), self.now
        self._exchange(client)  # what the outcome queued (a download's RESULT) leaves now
        self._drain(client)
        return outcome

    @property
    def _client_stalled(self) -> bool:
        return self.now < self._client_free_at

    def _exchange(self, client: ClientRequest) -> None:
        now, stalled = self.now, self._client_stalled
        wire, server = self._wire or client, self._server
        if client.finished:  # the real client has closed its socket: nothing reaches it
            self.down.due(now)
        elif not stalled:
            for datagram in self.down.due(now):
                wire.receive_datagram(datagram, SERVER, now)
        for datagram in self.up.due(now):
            server.receive_datagram(datagram, CLIENT, now)
        timer = client.get_timer()
        if timer is not None and timer <= now and not stalled:
            client.handle_timer(now)
        timer = self.endpoint.get_timer()
        if timer is not None and timer <= now:
            self.endpoint.handle_timer(now)
        self._server_step()
        if not stalled:
            datagrams = wire.datagrams_to_send(now)
            leave = max(now, self._client_free_at)  # after a read that stalled
            for datagram, _address in datagrams:
                self.up.send(datagram, leave)
        for datagram, _address in server.datagrams_to_send(now):
            self.down.send(datagram, now)
        if client.finished and self.client_finished_at is None:
            self.client_finished_at = now

    def _server_step(self) -> None:
        while (event := self.endpoint.next_event()) is not None:
            self.app.handle(event)

    def _client_events(self, client: ClientRequest, outcome: Outcome, received: bytearray) -> None:
        if self._client_stalled:
            return
        while (event := client.next_event()) is not None:
            outcome.events.append(event)
            if isinstance(event, DataReceived):
                received.extend(event.data)
            elif isinstance(event, EndReceived):
                ok = digest_bytes(bytes(received)) == event.digest
                digest = digest_bytes(bytes(received))
                client.finish(code=0 if ok else 30, message="", digest=digest, now=self.now)
            elif isinstance(event, Completed):
                outcome.code = 0
            elif isinstance(event, Failed):
                outcome.code, outcome.message = event.code, event.message
                outcome.timed_out = event.code == 42
            elif isinstance(event, Accepted):
                continue

    def _next_time(self, client: ClientRequest) -> float:
        times = [self.up.next_time(), self.endpoint.get_timer()]
        if self._client_stalled:
            times.append(self._client_free_at)
        else:
            timer = client.get_timer()
            times += [self.down.next_time(), None if timer is None else timer + self._timer_slack]
        pending = [t for t in times if t is not None]
        assert pending, "deadlock: nothing scheduled"
        return max(min(pending), self.now + MIN_STEP_S)

    def _drain(self, client: ClientRequest) -> None:
        """Let in-flight datagrams and lingering sessions play out (bounded)."""
        for _ in range(10_000):
            to_client = self._client_free_at if self._client_stalled else self.down.next_time()
            lingering = None if client.finished else client.get_timer()  # its last timer
            pending = [
                t
                for t in (self.up.next_time(), to_client, self.endpoint.get_timer(), lingering)
                if t is not None
            ]
            if not pending:
                return
            self.now = max(min(pending), self.now + MIN_STEP_S)
            self._exchange(client)
