"""UDP transfer session (sans-IO): one file's bytes in one direction, then a verdict.

Theory of operation
-------------------
After the handshake (handshake.py) a session moves ``size`` bytes from the *data
sender* to the *data receiver*, composing ``Sender`` or ``Receiver``:

    sender:   DATA ... (paced, selective repeat)      FIN(size, digest) ... until RESULT
    receiver:          ACK ... (cumulative + SACK)    RESULT(code, digest)  [linger]

The sender reads chunks through ``read_chunk(offset, size)`` and hashes each chunk
the first time it is read (new chunks are always read in order), so the digest in
FIN costs no extra pass. A read that fails (the store's error, or an ``OSError``)
or comes back short (the file shrank after its size was announced) ends this
session alone: CLOSE with code 40 (or the store's code) and ``Failed``, so one
unreadable file never stops the endpoint's other sessions.

The receiver hands in-order bytes to the application as ``DataReceived``
(everything delivered since the last event, copied once out of the adapter's
receive buffer); when every chunk and the FIN are in it reports
``EndReceived``, and the application checks the digest, commits (or not), and
calls ``finish(code, message, digest)``: that RESULT is the verdict both sides
report, carrying the digest the receiver computed, whatever the verdict.

Close survives loss: the sender repeats FIN on its retransmission timer until a
RESULT arrives, then answers with CLOSE carrying the verdict's code (0, or the
error) and ends; the receiver, after sending RESULT, *lingers* (TCP's TIME_WAIT),
answering every repeated FIN with the same RESULT, for ``give_up_s``: as long as
the sender may still be asking (a client lingers ``linger_rtos`` retransmission
timeouts instead: its user is waiting). The sender's CLOSE ends the linger early. Either
side gives up after ``give_up_s`` without progress and reports ``Failed`` (code
42); ``abort`` sends CLOSE with a non-zero code, and a peer's such CLOSE aborts.

State is data: ``SENDER`` and ``RECEIVER`` are transition tables (machine.py);
``finish`` and ``abort`` are the local triggers, refused with LocalProtocolError
where the table has no entry for them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from enum import Enum

from ...checksum import Hasher, new_hasher
from ...errors import Aborted, FtransferError, RemoteProtocolError, StorageIOError, TransferTimeout
from ..events import Completed, DataReceived, EndReceived, Failed
from ..machine import Machine
from ..ratelimit import Limits
from ..rtt import RttEstimator
from . import congestion
from .packets import Ack, Body, Close, Data, Fin, Result, encode, encode_data
from .receiver import Receiver
from .sender import Sender

ReadChunk = Callable[[int, int], bytes | memoryview]
"""``read_chunk(offset, size)``: the sender's view of the file."""
READ_AHEAD_BYTES = 256 * 1024
"""The sender reads the file in blocks this large (see BlockReader)."""
SessionEvent = DataReceived | EndReceived | Completed | Failed


class State(Enum):
    TRANSFER = "transfer"
    FINISHING = "finishing"
    """Sender: FIN sent, waiting for RESULT. Receiver: waiting for the verdict."""
    LINGER = "linger"
    """Receiver: RESULT sent; repeating it for a repeated FIN."""
    DONE = "done"
    ERROR = "error"


class Trigger(Enum):
    ALL_ACKED = "every chunk acknowledged (FIN sent)"
    RESULT = "RESULT received"
    END = "every chunk and the FIN in"
    FINISH = "finish(): the verdict"
    CLOSED = "CLOSE received"
    LINGER_OVER = "linger time over"
    TIMED_OUT = "no progress for give_up_s"
    ABORT = "abort()"


S, T = State, Trigger
_ENDINGS: dict[tuple[Enum, Enum], Enum] = {
    (state, trigger): S.DONE
    for state in (S.TRANSFER, S.FINISHING)
    for trigger in (T.CLOSED, T.TIMED_OUT, T.ABORT)
}
SENDER: dict[tuple[Enum, Enum], Enum] = {
    (S.TRANSFER, T.ALL_ACKED): S.FINISHING,
    (S.FINISHING, T.RESULT): S.DONE,
    **_ENDINGS,
}
RECEIVER: dict[tuple[Enum, Enum], Enum] = {
    (S.TRANSFER, T.END): S.FINISHING,
    (S.FINISHING, T.FINISH): S.LINGER,
    (S.LINGER, T.CLOSED): S.DONE,
    (S.LINGER, T.LINGER_OVER): S.DONE,
    (S.LINGER, T.ABORT): S.DONE,
    **_ENDINGS,
}
LOCAL_TRIGGERS = frozenset({T.FINISH, T.ABORT})


class BlockReader:
    """``read(offset, size)`` at any offset, served from blocks of READ_AHEAD_BYTES
    read with the given ``read``: the sender reads 1,400-byte chunks mostly in order,
    and one read per chunk cost ~1.5 us each of a ~10 us budget per datagram. A read
    outside the current block (a retransmission far behind) reads a new block there."""

    def __init__(self, read: Callable[[int, int], bytes]) -> None:
        self._read = read
        self._start = 0
        self._block = memoryview(b"")

    def __call__(self, offset: int, size: int) -> bytes | memoryview:
        at = offset - self._start
        if at < 0 or at + size > len(self._block):
            self._block = memoryview(self._read(offset, max(size, READ_AHEAD_BYTES)))
            self._start, at = offset, 0
        return self._block[at : at + size]


class SessionConfig:
    """What both ends agreed in the handshake (a plain class: made once per session)."""

    __slots__ = ("cc", "chunk_bytes", "give_up_s", "limits", "linger_rtos", "window")

    def __init__(
        self,
        *,
        chunk_bytes: int,
        window: int,
        give_up_s: float,
        cc: str = "bbr",
        linger_rtos: float | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.chunk_bytes, self.window, self.give_up_s, self.cc = chunk_bytes, window, give_up_s, cc
        self.limits = limits
        """Rate limits a sending session's pacer keeps to (proto/ratelimit.py)."""
        self.linger_rtos = linger_rtos
        """How long a receiver lingers after its RESULT, in retransmission timeouts
        (a client, which has a user waiting: long enough for the sender's repeated
        FIN); None: ``give_up_s``, as long as the sender may still be asking (a
        server, which is there anyway)."""


def shifted(read_chunk: ReadChunk, start: int) -> ReadChunk:
    """``read_chunk`` for a session whose byte 0 is the file's byte ``start`` (a
    resumed transfer)."""
    return lambda offset, n: read_chunk(start + offset, n)


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
        hasher: Hasher | None = None,
    ) -> None:
        """``hasher``: a sender's digest so far (a resumed transfer's, which knows
        the chunks before this session's first byte); FIN carries its digest."""
        self.session_id, self.size, self.config = session_id, size, config
        self.rtt = RttEstimator()
        role = "sender" if sending else "receiver"
        self.machine = Machine(
            f"udp session ({role})",
            SENDER if sending else RECEIVER,
            S.TRANSFER,
            local=LOCAL_TRIGGERS,
            error=S.ERROR,
        )
        self._events: collections.deque[SessionEvent] = collections.deque()
        self._delivered = bytearray()
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
            self.sender = Sender(
                size=size,
                chunk_bytes=config.chunk_bytes,
                window=config.window,
                cc=congestion.create(config.cc, mss=config.chunk_bytes),
                rtt=self.rtt,
                now=now,
                give_up_s=config.give_up_s,
                limits=config.limits,
            )
            self._read_chunk = read_chunk
            self.hasher = hasher if hasher is not None else new_hasher()
        else:
            self.receiver = Receiver(
                size=size, chunk_bytes=config.chunk_bytes, window=config.window
            )

    @property
    def state(self) -> State:
        state = self.machine.state
        assert isinstance(state, State)
        return state

    @property
    def done(self) -> bool:
        """The session has ended and every event has been taken."""
        return self.state in (S.DONE, S.ERROR) and not self._events and not self._delivered

    @property
    def hashed_bytes(self) -> int:
        """Sender: bytes read and sent at least once (for progress bars)."""
        return min(self.size, self._hashed * self.config.chunk_bytes)

    # ---- events ------------------------------------------------------------------------

    def _emit(self, event: SessionEvent) -> None:
        self._flush_delivered()
        self._events.append(event)

    def _flush_delivered(self) -> None:
        if self._delivered:
            data, self._delivered = self._delivered, bytearray()
            self._events.append(DataReceived(data=data, session=self.session_id))

    def next_event(self) -> SessionEvent | None:
        """What happened, oldest first (bytes delivered since the last call come first)."""
        if not self._events:
            self._flush_delivered()
        return self._events.popleft() if self._events else None

    def _end(self, trigger: Trigger, event: SessionEvent) -> None:
        if self.machine.go(trigger):
            self._emit(event)

    # ---- input -----------------------------------------------------------------------

    def receive(self, body: Body, now: float) -> None:
        """A datagram for this session (already checked and decoded)."""
        self._last_heard = now
        if isinstance(body, Close):
            self._on_close(body)
        elif self.sender is not None:
            self._sender_receive(body, now)
        else:
            self._receiver_receive(body, now)

    def _on_close(self, body: Close) -> None:
        if self.state is S.LINGER:
            self.machine.go(T.CLOSED)  # the sender heard our verdict
        elif body.code:
            message = body.message or "the peer aborted the transfer"
            self._end(T.CLOSED, Failed(code=body.code, message=message, session=self.session_id))

    def on_request_repeated(self, now: float) -> None:
        """The client sent its INITIAL again (our ACCEPT was lost)."""
        if self.sender is not None and self.state is S.TRANSFER:
            self.sender.resend_unseen_flight(now)

    def _sender_receive(self, body: Body, now: float) -> None:
        assert self.sender is not None
        if isinstance(body, Ack) and self.state is S.TRANSFER:
            self.sender.on_ack(body, now)
        elif isinstance(body, Result) and self.machine.can(T.RESULT):
            self._outbox.append(encode(self.session_id, Close(code=body.code, message="")))
            sid = self.session_id
            verdict: SessionEvent = (
                Completed(digest=body.digest, session=sid)
                if body.code == 0
                else Failed(code=body.code, message=body.message, digest=body.digest, session=sid)
            )
            self._end(T.RESULT, verdict)

    def receive_data(self, seq: int, tx: int, payload: memoryview, now: float) -> None:
        """A DATA datagram for this session (the hot path: no record is built)."""
        self._last_heard = now
        if self.receiver is None or self.state is not S.TRANSFER:
            return  # DATA to the data sender, or after the last chunk: nothing to do
        delivered = self.receiver.on_data(seq, tx, payload, now)
        if delivered:
            data = self._delivered
            for chunk in delivered:
                data += chunk
            self._maybe_end()  # the FIN may have overtaken the last chunks

    def _receiver_receive(self, body: Body, now: float) -> None:
        assert self.receiver is not None
        if isinstance(body, Data):
            self.receive_data(body.seq, body.tx, memoryview(body.payload), now)
        elif isinstance(body, Fin):
            if self._result is not None:  # our RESULT was lost: repeat it
                self._outbox.append(encode(self.session_id, self._result))
            elif body.size != self.size:
                self.abort(
                    code=RemoteProtocolError.code,
                    message=f"sender announced {body.size} bytes, not {self.size}",
                )
            else:
                self._fin = body
        self._maybe_end()

    def _maybe_end(self) -> None:
        assert self.receiver is not None
        if self._fin is not None and self.receiver.done and self.machine.can(T.END):
            self._end(
                T.END,
                EndReceived(size=self._fin.size, digest=self._fin.digest, session=self.session_id),
            )

    # ---- local verdicts ----------------------------------------------------------------

    def finish(self, *, code: int, message: str, digest: bytes, now: float) -> None:
        """Receiver: the verdict on EndReceived (code 0: committed), with the digest of
        what was received."""
        self.machine.go(T.FINISH)
        self._result = Result(code=code, digest=digest, message=message)
        self._outbox.append(encode(self.session_id, self._result))
        self._deadline = now + self._linger_s()
        sid = self.session_id
        self._emit(
            Completed(digest=digest, session=sid)
            if code == 0
            else Failed(code=code, message=message, digest=digest, session=sid)
        )

    def _linger_s(self) -> float:
        rtos = self.config.linger_rtos
        give_up = self.config.give_up_s
        return give_up if rtos is None else min(give_up, rtos * self.rtt.rto())

    def abort(self, *, code: int = Aborted.code, message: str = "aborted") -> None:
        """End now and tell the peer (CLOSE with ``code``)."""
        if self.state is S.DONE:
            return
        lingering = self.state is S.LINGER
        self.machine.go(T.ABORT)
        if not lingering:
            self._outbox.append(encode(self.session_id, Close(code=code, message=message)))
            self._emit(Failed(code=code, message=message, session=self.session_id))

    # ---- output and timers ---------------------------------------------------------------

    def datagrams(self, now: float) -> list[bytes]:
        """Datagrams to send now."""
        state = self.state
        if self.sender is not None and state is S.TRANSFER:
            self._send_data(now)
        elif (
            self.receiver is not None
            and state in (S.TRANSFER, S.FINISHING, S.LINGER)
            and self.receiver.ack_due(now)
        ):
            self._outbox.append(encode(self.session_id, self.receiver.make_ack(now)))
        out, self._outbox = self._outbox, []
        return out

    def _send_data(self, now: float) -> None:
        assert self.sender is not None
        chunk_bytes, read = self.config.chunk_bytes, self._read_chunk
        for seq, tx, size in self.sender.poll(now):
            try:
                payload = read(seq * chunk_bytes, size)
            except (FtransferError, OSError) as exc:
                self._read_failed(exc)
                return
            if len(payload) != size:  # the file shrank since its size was announced
                self._read_failed(StorageIOError("the file changed size while it was being sent"))
                return
            if seq == self._hashed:
                self.hasher.update(payload)
                self._hashed += 1
            self._outbox.append(encode_data(self.session_id, seq, tx, payload))
        if self.sender.done and self.machine.go(T.ALL_ACKED):
            self._fin = Fin(size=self.size, digest=self.hasher.digest())
            self._outbox.append(encode(self.session_id, self._fin))
            self._deadline = now + self.rtt.rto()

    def _read_failed(self, exc: FtransferError | OSError) -> None:
        """The file cannot give what was announced: end this session alone with CLOSE
        (code 40, or the store's own code), as protocol.md U4 lets either side."""
        if isinstance(exc, FtransferError):
            self.abort(code=exc.code or StorageIOError.code, message=str(exc))
        else:
            self.abort(code=StorageIOError.code, message=f"read error: {exc.strerror or exc}")

    def get_timer(self) -> float | None:
        state = self.state
        if state in (S.DONE, S.ERROR):
            return None
        timers = [self._last_heard + self.config.give_up_s]
        if self._deadline is not None:
            timers.append(self._deadline)
        if state is S.TRANSFER:
            inner = self.sender.get_timer() if self.sender is not None else None
            if self.receiver is not None:
                inner = self.receiver.get_timer()
            if inner is not None:
                timers.append(inner)
        return min(timers)

    def handle_timer(self, now: float) -> None:
        state = self.state
        if state in (S.DONE, S.ERROR):
            return
        if self.sender is not None and state is S.TRANSFER:
            self.sender.handle_timer(now)
            if self.sender.failed:
                self._timed_out()
            return
        if now >= self._last_heard + self.config.give_up_s and state is not S.LINGER:
            self._timed_out()
        elif self._deadline is not None and now >= self._deadline:
            self._on_deadline(now)

    def _timed_out(self) -> None:
        seconds = self.config.give_up_s
        message = f"no progress for {seconds:g} s: the peer or the path is gone"
        self._end(
            T.TIMED_OUT, Failed(code=TransferTimeout.code, message=message, session=self.session_id)
        )

    def _on_deadline(self, now: float) -> None:
        if self.state is S.LINGER:
            self.machine.go(T.LINGER_OVER)
        elif self.state is S.FINISHING and self._fin is not None and self.sender is not None:
            self.rtt.on_timeout()
            self._outbox.append(encode(self.session_id, self._fin))
            self._deadline = now + self.rtt.rto()
        else:
            self._deadline = None
