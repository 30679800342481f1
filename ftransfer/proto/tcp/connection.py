"""TCP session state machine (sans-IO): ``receive_data`` / ``next_event`` / ``send``.

Theory of operation
-------------------
A connection carries two independent streams: *requests* (client -> server) and
*replies* (server -> client). Each is a small state machine given as a table,
``(state, event type) -> next state``; a pair missing from the table is a protocol
error (``RemoteProtocolError`` for what we receive, ``LocalProtocolError`` for what
we try to send), never a silent fall-through.

Pipelining: the client may send any number of requests without waiting. Replies
come strictly in request order, so ``_pending`` (a FIFO of request types still
awaiting a reply) is enough to check that each reply answers the oldest request.

Data accounting: PUT and FILE declare an exact size (PUT_AT and FILE_AT: the
size less the offset the DATA starts at); DATA beyond it, or END before it, is a
protocol error on the sending side's stream. An upload the server has
already refused (ERROR sent while the client is still uploading) is *discarded*
by the core: its remaining DATA/END/ABORT frames are consumed without events, so the
server needs no "skip" state of its own.

Errors (h11's rule): after a protocol error, received or local, the connection is
broken and refuses more work. The last thing a server may still send is one ERROR
that ends the connection (``close_with_error``: code 1 for a protocol error, 42
for a timeout, 50 for an internal error), allowed whenever the reply stream is at
a frame boundary: between replies, or in a download or listing, where ERROR may
stand in place of END or LIST_END. Only a DATA frame half written (the adapter's
sendfile) rules it out, and the adapter knows when that is. A client receives
that ERROR as the answer to its oldest request if one is outstanding, and as a
``Failed`` that answers nothing, after which the reply stream is closed, if none is.

Zero copy: ``receive_data`` keeps a view of the caller's buffer and ``FileData``
events are slices of it. The caller must drain ``next_event`` until ``NEED_DATA``
before calling ``receive_data`` again (enforced). Only headers and control payloads
that straddle two reads are copied, and those are bounded by MAX_CONTROL_BYTES.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from ...config import FRAME_HEADER_BYTES, PROTOCOL_VERSION
from ...errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from . import events as ev
from . import frames
from .frames import FrameType


class Role(Enum):
    """Which end of the connection this is."""

    CLIENT = "client"
    SERVER = "server"


class StreamState(Enum):
    """States of one direction of the connection."""

    HELLO = "hello"
    OPENED = "opened"
    """HELLO sent, no request yet: the one place LOGIN may come."""
    IDLE = "idle"
    UPLOADING = "uploading"
    DOWNLOADING = "downloading"
    LISTING = "listing"
    CLOSED = "closed"


S = StreamState
Transitions = dict[tuple[StreamState, type], StreamState]

_AFTER_HELLO: Transitions = {
    (S.IDLE, ev.PutRequested): S.UPLOADING,
    (S.UPLOADING, ev.FileData): S.UPLOADING,
    (S.UPLOADING, ev.FileEnded): S.IDLE,
    (S.UPLOADING, ev.FileAborted): S.IDLE,
    **{
        (S.IDLE, kind): S.IDLE
        for kind in (
            ev.GetRequested,
            ev.PartialRequested,
            ev.DownloadVerified,
            ev.ListRequested,
            ev.StatRequested,
            ev.RemoveRequested,
            ev.MkdirRequested,
            ev.MoveRequested,
            ev.TicketRequested,
            ev.PingRequested,
        )
    },
}
REQUEST_TRANSITIONS: Transitions = {
    (S.HELLO, ev.HelloOffered): S.OPENED,
    (S.OPENED, ev.LoginRequested): S.IDLE,
    **_AFTER_HELLO,
    **{(S.OPENED, kind): after for (state, kind), after in _AFTER_HELLO.items() if state is S.IDLE},
}
"""LOGIN only as the first request after HELLO; any other request there is as in IDLE."""

REPLY_TRANSITIONS: Transitions = {
    (S.HELLO, ev.HelloAccepted): S.IDLE,
    (S.HELLO, ev.Failed): S.CLOSED,
    (S.IDLE, ev.PutCommitted): S.IDLE,
    (S.IDLE, ev.PartialHeld): S.IDLE,
    (S.IDLE, ev.Stated): S.IDLE,
    (S.IDLE, ev.Done): S.IDLE,
    (S.IDLE, ev.TicketIssued): S.IDLE,
    (S.IDLE, ev.Ponged): S.IDLE,
    (S.IDLE, ev.Failed): S.IDLE,
    (S.IDLE, ev.FileStarted): S.DOWNLOADING,
    (S.DOWNLOADING, ev.FileData): S.DOWNLOADING,
    (S.DOWNLOADING, ev.FileEnded): S.IDLE,
    (S.DOWNLOADING, ev.Failed): S.IDLE,
    (S.IDLE, ev.Listed): S.LISTING,
    (S.IDLE, ev.ListEnded): S.IDLE,
    (S.LISTING, ev.Listed): S.LISTING,
    (S.LISTING, ev.ListEnded): S.IDLE,
    (S.LISTING, ev.Failed): S.IDLE,
}

ANSWERS: dict[type, tuple[type, ...]] = {
    ev.HelloAccepted: (ev.HelloOffered,),
    ev.PutCommitted: (ev.PutRequested,),
    ev.PartialHeld: (ev.PartialRequested,),
    ev.FileStarted: (ev.GetRequested,),
    ev.Listed: (ev.ListRequested,),
    ev.ListEnded: (ev.ListRequested,),
    ev.Stated: (ev.StatRequested,),
    ev.Done: (ev.LoginRequested, ev.RemoveRequested, ev.MkdirRequested, ev.MoveRequested),
    ev.TicketIssued: (ev.TicketRequested,),
    ev.Ponged: (ev.PingRequested,),
}
"""Which request the first frame of a reply may answer (ERROR answers any)."""

NO_REPLY = (ev.DownloadVerified, ev.FileData, ev.FileEnded, ev.FileAborted)
"""Request-stream frames that are not requests awaiting a reply."""


def negotiate_version(offer: ev.HelloOffered) -> int | None:
    """The version to speak with a client's offer, or None if there is none."""
    if offer.min_version <= PROTOCOL_VERSION <= offer.max_version:
        return PROTOCOL_VERSION
    return None


FRAME_NAMES: dict[type, str] = {
    ev.HelloOffered: "HELLO",
    ev.HelloAccepted: "HELLO_OK",
    ev.LoginRequested: "LOGIN",
    ev.PutRequested: "PUT",
    ev.FileData: "DATA",
    ev.FileEnded: "END",
    ev.FileAborted: "ABORT",
    ev.PutCommitted: "PUT_OK",
    ev.PartialRequested: "PARTIAL",
    ev.PartialHeld: "PARTIAL_OK",
    ev.GetRequested: "GET",
    ev.FileStarted: "FILE",
    ev.DownloadVerified: "VERIFIED",
    ev.ListRequested: "LIST",
    ev.Listed: "ENTRIES",
    ev.ListEnded: "LIST_END",
    ev.StatRequested: "STAT",
    ev.Stated: "STAT_OK",
    ev.RemoveRequested: "REMOVE",
    ev.MkdirRequested: "MKDIR",
    ev.MoveRequested: "MOVE",
    ev.Done: "OK",
    ev.TicketRequested: "TICKET",
    ev.TicketIssued: "TICKET_OK",
    ev.PingRequested: "PING",
    ev.Ponged: "PONG",
    ev.Failed: "ERROR",
}
"""The wire name of each event's frame, for the messages a peer reads."""

_WHERE = {
    StreamState.HELLO: "before HELLO",
    StreamState.OPENED: "between requests",
    StreamState.IDLE: "between requests",
    StreamState.UPLOADING: "inside a file's DATA",
    StreamState.DOWNLOADING: "inside a file's DATA",
    StreamState.LISTING: "inside a listing",
    StreamState.CLOSED: "after the close",
}


class _Stream:
    """One direction: its state and the bytes still owed by the current file."""

    def __init__(self, table: Transitions) -> None:
        self.table = table
        self.state = StreamState.HELLO
        self.remaining = 0

    def next_state(self, kind: type, err: type[ProtocolError]) -> StreamState:
        nxt = self.table.get((self.state, kind))
        if nxt is None:
            raise err(f"{FRAME_NAMES.get(kind, kind.__name__)} is not allowed {_WHERE[self.state]}")
        return nxt

    def check_data(self, nbytes: int, err: type[ProtocolError]) -> None:
        self.next_state(ev.FileData, err)
        if nbytes > self.remaining:
            raise err(f"{nbytes} more bytes than the {self.remaining} still declared")

    def advance(self, event: ev.Event, err: type[ProtocolError]) -> None:
        nxt = self.next_state(type(event), err)
        if isinstance(event, ev.FileEnded) and self.remaining:
            raise err(f"END with {self.remaining} declared bytes missing")
        if isinstance(event, ev.PutRequested):
            self.remaining = event.size - event.offset  # (PUT_AT: the rest only)
        elif isinstance(event, ev.FileStarted):
            self.remaining = event.size - (event.offset or 0)
        self.state = nxt


class Connection:
    """One end of an ftransfer TCP connection, without any I/O."""

    def __init__(self, role: Role) -> None:
        self.role = role
        requests, replies = _Stream(REQUEST_TRANSITIONS), _Stream(REPLY_TRANSITIONS)
        self._requests, self._replies = requests, replies
        self._inbound = requests if role is Role.SERVER else replies
        self._pending: deque[type] = deque()
        self._upload_unanswered = False
        self._discarding = False
        self._view = memoryview(b"")
        self._pos = 0
        self._partial = bytearray()
        self._control: tuple[FrameType, int] | None = None
        self._data_left = 0
        self._eof = False
        self._broken: ProtocolError | None = None
        self._closed_with_error = False

    # ---- state, for adapters and tests ----------------------------------------

    @property
    def request_state(self) -> StreamState:
        return self._requests.state

    @property
    def reply_state(self) -> StreamState:
        return self._replies.state

    @property
    def in_file(self) -> bool:
        """A file's bytes are arriving (an upload on the server, a download on the
        client): the adapter reads into a large buffer meanwhile."""
        return self._inbound.state in (StreamState.UPLOADING, StreamState.DOWNLOADING)

    @property
    def pending_requests(self) -> int:
        """Requests sent or received that still await their reply."""
        return len(self._pending)

    # ---- receiving -------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand over bytes from the peer; an empty buffer means end of stream."""
        if self._pos < len(self._view):
            raise LocalProtocolError("receive_data called before next_event drained the last data")
        if not data:
            self._eof = True
        self._view = memoryview(data)
        self._pos = 0

    @property
    def broken(self) -> ProtocolError | None:
        """The protocol error that broke the connection, if one did."""
        return self._broken

    def next_event(self) -> ev.Event | ev.NeedData | ev.ConnectionClosed:
        """The next complete event, NEED_DATA, or ConnectionClosed at a clean end."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._broken = exc
            raise

    def _next_event(self) -> ev.Event | ev.NeedData | ev.ConnectionClosed:
        while True:
            if self._data_left:
                chunk = self._take_some(self._data_left)
                if chunk is None:
                    return self._starved()
                self._data_left -= len(chunk)
                self._inbound.remaining -= len(chunk)
                if not self._discarding:
                    return ev.FileData(data=chunk)
                continue
            if self._control is None:
                raw = self._take_exact(FRAME_HEADER_BYTES)
                if raw is None:
                    return self._starved()
                frame_type, length = frames.parse_header_untrusted(raw)
                if frame_type is FrameType.DATA:
                    self._inbound.check_data(length, RemoteProtocolError)
                    self._data_left = length
                    continue
                self._control = (frame_type, length)
            event = self._control_event()
            if event is None:
                return self._starved()
            if self._accept(event, received=True):
                return event

    def _control_event(self) -> ev.Event | None:
        assert self._control is not None
        frame_type, length = self._control
        payload = self._take_exact(length)
        if payload is None:
            return None
        self._control = None
        return frames.decode_untrusted(frame_type, bytes(payload))

    def _starved(self) -> ev.NeedData | ev.ConnectionClosed:
        if not self._eof:
            return ev.NEED_DATA
        if self._partial or self._control is not None or self._data_left:
            raise RemoteProtocolError("connection closed in the middle of a frame")
        if self._inbound.state in (StreamState.UPLOADING, StreamState.DOWNLOADING):
            raise RemoteProtocolError("connection closed in the middle of a file")
        return ev.ConnectionClosed()

    def _take_exact(self, n: int) -> bytes | memoryview | None:
        available = len(self._view) - self._pos
        if not self._partial and available >= n:
            out = self._view[self._pos : self._pos + n]
            self._pos += n
            return out
        take = min(n - len(self._partial), available)
        self._partial += self._view[self._pos : self._pos + take]
        self._pos += take
        if len(self._partial) < n:
            return None
        out_bytes = bytes(self._partial)
        self._partial.clear()
        return out_bytes

    def _take_some(self, n: int) -> memoryview | None:
        available = len(self._view) - self._pos
        if available <= 0:
            return None
        take = min(n, available)
        out = self._view[self._pos : self._pos + take]
        self._pos += take
        return out

    # ---- sending ----------------------------------------------------------------

    def send(self, event: ev.Event) -> bytes:
        """Account for an event we send and return its bytes to write."""
        self._check_usable()
        if isinstance(event, ev.FileData):
            return self.start_data(len(event.data)) + bytes(event.data)
        data = frames.encode(event)
        try:
            self._accept(event, received=False)
        except LocalProtocolError as exc:
            self._broken = exc
            raise
        return data

    def start_data(self, nbytes: int) -> bytes:
        """Header of a DATA frame whose ``nbytes`` the caller sends itself (sendfile)."""
        self._check_usable()
        outbound = self._requests if self.role is Role.CLIENT else self._replies
        outbound.check_data(nbytes, LocalProtocolError)
        outbound.remaining -= nbytes
        return frames.header(FrameType.DATA, nbytes)

    def close_with_error(self, code: int, message: str) -> bytes:
        """The server's last frame: an ERROR that ends the connection (see the module
        docstring for when it may be sent). The caller closes after writing it."""
        if self.role is not Role.SERVER or self._closed_with_error:
            raise LocalProtocolError("only a server ends a connection with ERROR, once")
        self._closed_with_error = True
        self._replies.state = StreamState.CLOSED
        self._pending.clear()
        return frames.encode(ev.Failed(code=code, message=message))

    def _check_usable(self) -> None:
        if self._closed_with_error:
            raise LocalProtocolError("the connection was ended with ERROR")
        if isinstance(self._broken, LocalProtocolError):
            raise LocalProtocolError(f"the connection is broken: {self._broken}")

    # ---- the two streams ------------------------------------------------------------

    def _accept(self, event: ev.Event, *, received: bool) -> bool:
        """Apply an event to its stream; False if it belongs to a discarded upload."""
        err = RemoteProtocolError if received else LocalProtocolError
        if (self.role is Role.SERVER) == received:
            return self._accept_request(event, err)
        if received and self._is_last_error(event):
            self._replies.state = StreamState.CLOSED  # the server's close_with_error
            return True
        self._accept_reply(event, err)
        return True

    def _is_last_error(self, event: ev.Event) -> bool:
        """An ERROR between replies, with no request awaiting one: the server ended
        the connection (a protocol error of ours, a timeout), it answers nothing."""
        idle = self._replies.state is StreamState.IDLE
        return isinstance(event, ev.Failed) and idle and not self._pending

    def _accept_request(self, event: ev.Event, err: type[ProtocolError]) -> bool:
        self._requests.advance(event, err)
        discarded = self._discarding
        if isinstance(event, ev.FileEnded | ev.FileAborted):
            self._upload_unanswered = False
            self._discarding = False
        elif not isinstance(event, NO_REPLY):
            self._pending.append(type(event))
            self._upload_unanswered = isinstance(event, ev.PutRequested)
        return not discarded

    def _accept_reply(self, event: ev.Event, err: type[ProtocolError]) -> None:
        opening = self._replies.state in (StreamState.IDLE, StreamState.HELLO)
        if opening and not (isinstance(event, ev.Failed) and self._replies.state is S.HELLO):
            self._check_answers(event, err)
        closes = not isinstance(event, ev.FileStarted | ev.Listed)
        last_is_upload = self._upload_unanswered and len(self._pending) == 1
        if closes and last_is_upload and isinstance(event, ev.PutCommitted):
            raise err("PUT_OK before the upload ended")
        self._replies.advance(event, err)
        if closes and self._pending:
            self._pending.popleft()
            if last_is_upload:
                self._upload_unanswered = False
                self._discarding = True

    def _check_answers(self, event: ev.Event, err: type[ProtocolError]) -> None:
        if not self._pending:
            raise err(f"{type(event).__name__} answers no outstanding request")
        expected = self._pending[0]
        answers = ANSWERS.get(type(event))
        if answers is not None and expected not in answers:
            raise err(f"{type(event).__name__} cannot answer {expected.__name__}")
