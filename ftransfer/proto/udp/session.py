"""UDP transfer session (sans-IO): one file's bytes in one direction, then a verdict.

Theory of operation
-------------------
After the handshake (endpoint.py) a session moves ``size`` bytes from the *data
sender* to the *data receiver*, composing ``Sender`` or ``Receiver``:

    sender:   DATA ... (paced, selective repeat)      FIN(size, digest) ... until RESULT
    receiver:          ACK ... (cumulative + SACK)    RESULT(code, digest)  [linger]

The sender reads chunks through ``read_chunk(offset, size)`` and hashes each chunk
the first time it is read (new chunks are always read in order), so the digest in
FIN costs no extra pass. The receiver hands in-order data to the application as
``DataArrived`` events; when every chunk and the FIN are in, it emits
``FinArrived`` and the application checks the digest, commits (or not), and calls
``finish(code, message)``: that RESULT is the verdict both sides report.

Close survives loss: the sender repeats FIN on its retransmission timer until a
RESULT arrives; the receiver, after sending RESULT, *lingers* (TCP's TIME_WAIT),
answering every repeated FIN with the same RESULT, for ``give_up_s``: as long as
the sender may still be asking. A CLOSE from the sender ends the linger early.
Either side gives up after ``give_up_s`` without progress and reports
``TimedOut``; a CLOSE with a non-zero code aborts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ...checksum import ZERO_DIGEST, new_hasher
from ..rtt import RttEstimator
from . import congestion
from .packets import Ack, Body, Close, Data, Fin, Packet, Result, encode, encode_data
from .receiver import Receiver
from .sender import Sender

ReadChunk = Callable[[int, int], bytes | memoryview]
"""``read_chunk(offset, size)``: the sender's view of the file."""


class State(Enum):
    TRANSFER = "transfer"
    FINISHING = "finishing"  # sender: FIN sent; receiver: waiting for the verdict
    LINGER = "linger"
    DONE = "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class DataArrived:
    """In-order bytes for the receiving application. Consecutive deliveries join the
    same event: the payloads are copied out of the adapter's receive buffer once,
    here, and the application writes and hashes once per batch of datagrams."""

    data: bytearray


@dataclass(frozen=True, slots=True, kw_only=True)
class FinArrived:
    """Every byte is in; the sender's digest. Call ``finish`` with the verdict."""

    size: int
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """The transfer ended with the receiver's verdict (code 0: committed)."""

    code: int
    message: str
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedOut:
    """No progress for give_up_s: the peer or the path is gone."""


SessionEvent = DataArrived | FinArrived | Finished | TimedOut


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    chunk_bytes: int
    window: int
    """Chunks the receiver buffers (sender: the peer's advertised window)."""
    give_up_s: float
    cc: str = "bbr"


class Session:
    """One established transfer, either the data sender or the data receiver."""

    def __init__(
        self,
        *,
        session_id: int,
        size: int,
        sending: bool,
        config: SessionConfig,
        now: float,
        read_chunk: ReadChunk | None = None,
    ) -> None:
        self.session_id, self.size, self.config = session_id, size, config
        self.rtt = RttEstimator()
        self.state = State.TRANSFER
        self.events: list[SessionEvent] = []
        self._outbox: list[bytes] = []
        self._last_heard = now
        self._deadline: float | None = None
        self._result: Result | None = None
        self._fin: Fin | None = None
        self.sender: Sender | None = None
        self.receiver: Receiver | None = None
        self._hashed = 0  # chunks read (and hashed) by the sender so far
        if sending:
            assert read_chunk is not None
            mss = config.chunk_bytes
            self.sender = Sender(
                size=size,
                chunk_bytes=config.chunk_bytes,
                window=config.window,
                cc=congestion.create(config.cc, mss=mss),
                rtt=self.rtt,
                now=now,
                give_up_s=config.give_up_s,
            )
            self._read_chunk = read_chunk
            self._hasher = new_hasher()
        else:
            self.receiver = Receiver(
                size=size, chunk_bytes=config.chunk_bytes, window=config.window
            )

    @property
    def hashed_bytes(self) -> int:
        """Sender: bytes read and sent at least once (for progress bars)."""
        return min(self.size, self._hashed * self.config.chunk_bytes)

    # ---- input -----------------------------------------------------------------------

    def receive(self, packet: Packet, now: float) -> None:
        """A datagram for this session (already checked and decoded)."""
        self._last_heard = now
        body = packet.body
        if isinstance(body, Close):
            if self.state is not State.DONE and body.code:
                self._end(Finished(code=body.code, message=body.message, digest=ZERO_DIGEST))
            elif self.state is State.LINGER:
                self.state = State.DONE
            return
        if self.sender is not None:
            self._sender_receive(body, now)
        else:
            self._receiver_receive(body, now)

    def on_request_repeated(self, now: float) -> None:
        """The client sent its INITIAL again (our ACCEPT was lost)."""
        if self.sender is not None and self.state is State.TRANSFER:
            self.sender.resend_unseen_flight(now)

    def _sender_receive(self, body: Body, now: float) -> None:
        assert self.sender is not None
        if isinstance(body, Ack) and self.state is State.TRANSFER:
            self.sender.on_ack(body, now)
        elif isinstance(body, Result) and self.state is State.FINISHING:
            self._outbox.append(encode(self.session_id, Close(code=0, message="")))
            self._end(Finished(code=body.code, message=body.message, digest=body.digest))

    def receive_data(self, seq: int, tx: int, payload: memoryview, now: float) -> None:
        """A DATA datagram for this session (the hot path: no Packet is built)."""
        self._last_heard = now
        if self.receiver is None or self.state is not State.TRANSFER:
            return  # DATA to the data sender, or after the last chunk: nothing to do
        delivered = self.receiver.on_data(seq, tx, payload, now)
        if delivered:
            last = self.events[-1] if self.events else None
            if not isinstance(last, DataArrived):
                last = DataArrived(data=bytearray())
                self.events.append(last)
            data = last.data  # += on a local: in place (the event is frozen)
            for chunk in delivered:
                data += chunk
            self._maybe_fin_arrived()  # the FIN may have overtaken the last chunks

    def _receiver_receive(self, body: Body, now: float) -> None:
        assert self.receiver is not None
        if isinstance(body, Data):
            self.receive_data(body.seq, body.tx, memoryview(body.payload), now)
        elif isinstance(body, Fin):
            if self._result is not None:  # our RESULT was lost: repeat it
                self._outbox.append(encode(self.session_id, self._result))
            elif body.size != self.size:
                self.fail(code=30, message=f"sender announced {body.size} bytes, not {self.size}")
            else:
                self._fin = body
        self._maybe_fin_arrived()

    def _maybe_fin_arrived(self) -> None:
        assert self.receiver is not None
        if self.state is State.TRANSFER and self._fin is not None and self.receiver.done:
            self.state = State.FINISHING
            self.events.append(FinArrived(size=self._fin.size, digest=self._fin.digest))

    # ---- verdicts ----------------------------------------------------------------------

    def finish(self, *, code: int, message: str, digest: bytes, now: float) -> None:
        """Receiver: report the verdict on a FinArrived (code 0: committed)."""
        self._result = Result(code=code, digest=digest, message=message)
        self._outbox.append(encode(self.session_id, self._result))
        self.state = State.LINGER
        self._deadline = now + self.config.give_up_s
        self.events.append(Finished(code=code, message=message, digest=digest))

    def fail(self, *, code: int, message: str) -> None:
        """Abort: tell the peer and end."""
        self._outbox.append(encode(self.session_id, Close(code=code, message=message)))
        self._end(Finished(code=code, message=message, digest=ZERO_DIGEST))

    def _end(self, event: SessionEvent) -> None:
        self.state = State.DONE
        self.events.append(event)

    # ---- output and timers ---------------------------------------------------------------

    def datagrams(self, now: float) -> list[bytes]:
        """Datagrams to send now."""
        if self.sender is not None and self.state is State.TRANSFER:
            self._send_data(now)
        elif (
            self.receiver is not None
            and self.state is not State.DONE
            and self.receiver.ack_due(now)
        ):
            self._outbox.append(encode(self.session_id, self.receiver.make_ack(now)))
        out, self._outbox = self._outbox, []
        return out

    def _send_data(self, now: float) -> None:
        assert self.sender is not None
        chunk_bytes, read = self.config.chunk_bytes, self._read_chunk
        for seq, tx, size in self.sender.poll(now):
            payload = read(seq * chunk_bytes, size)
            if seq == self._hashed:
                self._hasher.update(payload)
                self._hashed += 1
            self._outbox.append(encode_data(self.session_id, seq, tx, payload))
        if self.sender.done:
            self._send_fin(now)

    def _send_fin(self, now: float) -> None:
        self.state = State.FINISHING
        self._fin = Fin(size=self.size, digest=self._hasher.digest())
        self._outbox.append(encode(self.session_id, self._fin))
        self._deadline = now + self.rtt.rto()

    def get_timer(self) -> float | None:
        if self.state is State.DONE:
            return None
        timers = [self._last_heard + self.config.give_up_s]
        if self._deadline is not None:
            timers.append(self._deadline)
        if self.sender is not None and self.state is State.TRANSFER:
            sender_timer = self.sender.get_timer()
            if sender_timer is not None:
                timers.append(sender_timer)
        if self.receiver is not None and self.state is State.TRANSFER:
            ack_timer = self.receiver.get_timer()
            if ack_timer is not None:
                timers.append(ack_timer)
        return min(timers)

    def handle_timer(self, now: float) -> None:
        if self.state is State.DONE:
            return
        if self.sender is not None and self.state is State.TRANSFER:
            self.sender.handle_timer(now)
            if self.sender.failed:
                self._end(TimedOut())
            return
        if now >= self._last_heard + self.config.give_up_s and self.state is not State.LINGER:
            self._end(TimedOut())
        elif self._deadline is not None and now >= self._deadline:
            self._on_deadline(now)

    def _on_deadline(self, now: float) -> None:
        if self.state is State.LINGER:
            self.state = State.DONE
        elif self.state is State.FINISHING and self._fin is not None and self.sender is not None:
            self.rtt.on_timeout()
            self._outbox.append(encode(self.session_id, self._fin))
            self._deadline = now + self.rtt.rto()
        else:
            self._deadline = None
