"""The TFTP client core (sans-IO): the request handshake, then a sender or a receiver.

Theory of operation
-------------------
``TftpClient`` is a datagram core (proto/machine.py) for one get or put::

    REQUESTING --answered--> TRANSFERRING --(the transfer's end)--> DONE | FAILED
        \\______________ refused / gave up / aborted ______________/

The server answers from a new port (its transfer id); the first answer from the
server's host fixes the peer. For a get, an OACK is acked with ACK 0 and DATA 1
means the server ignored the options; for a put, OACK or ACK 0 starts the data.
An ERROR while options were asked (see FALLBACK_CODES) makes one more request
without them, so servers that refuse options still work, at RFC 1350's speed.
Once the transfer runs, everything is the ``BlockSender``'s or ``BlockReceiver``'s
(transfer.py): their events come out of ``next_event`` unchanged.
"""

from __future__ import annotations

import collections
from enum import Enum

from ...errors import FtransferError, InternalError, RemoteProtocolError, TransferTimeout
from ..events import Failed
from ..machine import Machine
from ..rtt import RttEstimator
from .packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    OptionError,
    Params,
    Request,
    TftpPacketError,
    check_oack,
    encode_ack,
    encode_error,
    encode_request,
    parse_untrusted,
)
from .receiver import BlockReceiver
from .sender import BlockSender
from .transfer import (
    Address,
    Event,
    Reader,
    TftpStats,
    error_from_tftp,
    failure,
)

FALLBACK_CODES = (ErrorCode.NOT_DEFINED, ErrorCode.ILLEGAL_OPERATION, ErrorCode.OPTION_REFUSED)
"""ERROR codes after which a client that asked for options asks again without them:
8 is RFC 2347's refusal; old servers answer unknown options with 0 or 4."""


class ClientState(Enum):
    REQUESTING = "requesting"
    TRANSFERRING = "transferring"
    OVER = "over"
    ERROR = "error"


class ClientTrigger(Enum):
    ANSWERED = "OACK, ACK 0 or DATA 1 from the server"
    REFUSED = "ERROR from the server"
    GAVE_UP = "no answer within give_up_s"
    ABORT = "abort()"


C, CT = ClientState, ClientTrigger
TRANSITIONS: dict[tuple[Enum, Enum], Enum] = {
    (C.REQUESTING, CT.ANSWERED): C.TRANSFERRING,
    (C.REQUESTING, CT.REFUSED): C.OVER,
    (C.REQUESTING, CT.GAVE_UP): C.OVER,
    (C.REQUESTING, CT.ABORT): C.OVER,
    (C.TRANSFERRING, CT.ABORT): C.OVER,
    (C.OVER, CT.ABORT): C.OVER,
}


class TftpClient:
    """A client transfer (a datagram core)."""

    def __init__(
        self,
        request: Request,
        server: Address,
        *,
        now: float,
        give_up_s: float,
        read: Reader | None = None,
    ) -> None:
        if request.write != (read is not None):
            raise InternalError("a put needs a reader, a get must not have one")
        self.request, self.server = request, server
        self._read, self._give_up_s = read, give_up_s
        self.machine = Machine(
            "tftp client", TRANSITIONS, C.REQUESTING, local=frozenset({CT.ABORT}), error=C.ERROR
        )
        self._rtt = RttEstimator()
        self.transfer: BlockSender | BlockReceiver | None = None
        self.stats = TftpStats()
        self._out: list[tuple[bytes, Address]] = []
        self._events: collections.deque[Event] = collections.deque()
        self._give_up_at = now + give_up_s
        self._fell_back = False
        self._send_request(now)

    @property
    def heard(self) -> bool:
        """The server has answered (an ICMP error after that is noise)."""
        return self.transfer is not None or self.machine.state is not C.REQUESTING

    @property
    def finished(self) -> bool:
        if self.transfer is not None:
            return self.transfer.finished
        return self.machine.state is not C.REQUESTING

    @property
    def params(self) -> Params | None:
        return self.transfer.params if self.transfer is not None else None

    def _send_request(self, now: float) -> None:
        self._request_bytes = encode_request(self.request)
        self._sent_at: float | None = now
        self._out.append((self._request_bytes, self.server))
        self.stats.datagrams_sent += 1
        self._retry_at = now + self._rtt.rto()

    # ---- the datagram-core API ----------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        if self.transfer is not None:
            self._out.extend(self.transfer.datagrams_to_send(now))
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        if self._events:
            return self._events.popleft()
        return self.transfer.next_event() if self.transfer is not None else None

    def get_timer(self) -> float | None:
        if self.transfer is not None:
            return self.transfer.get_timer()
        return None if self.finished else min(self._retry_at, self._give_up_at)

    def handle_timer(self, now: float) -> None:
        if self.transfer is not None:
            self.transfer.handle_timer(now)
        elif self.finished:
            return
        elif now >= self._give_up_at:
            self.machine.go(CT.GAVE_UP)
            message = f"tftp: no answer from the server in {self._give_up_s:g} s"
            self._events.append(failure(TransferTimeout(message)))
        elif now >= self._retry_at:
            self._rtt.on_timeout()
            self._sent_at = None  # Karn: no sample from a repeated request
            self._out.append((self._request_bytes, self.server))
            self.stats.datagrams_sent += 1
            self.stats.retransmitted += 1
            self._retry_at = now + self._rtt.rto()

    def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        if self.transfer is not None:
            self.transfer.receive_datagram(data, addr, now)
            return
        if self.finished or addr[0] != self.server[0]:
            self.stats.strangers += 1
            return
        try:
            packet = parse_untrusted(data)
        except TftpPacketError:
            self.stats.malformed += 1
            return
        if self._sent_at is not None:
            self._rtt.on_sample(now - self._sent_at)
        if isinstance(packet, Error):
            self._on_error(packet, now)
        elif isinstance(packet, OptionAck):
            self._on_oack(packet, addr, now)
        elif isinstance(packet, Data) and not self.request.write and packet.block == 1:
            self._start(Params(), addr, now)
            if self.transfer is not None:
                self.transfer.receive_datagram(data, addr, now)
        elif isinstance(packet, Ack) and self.request.write and packet.block == 0:
            self._start(Params(), addr, now)
        else:
            self.stats.malformed += 1

    # ---- local decisions ------------------------------------------------------------

    def accept_final(self, now: float) -> None:
        """A get's final block is stored: acknowledge it (see BlockReceiver)."""
        if not isinstance(self.transfer, BlockReceiver):
            self.machine.go(CT.ABORT)  # raises: there is no download to accept
            return
        self.transfer.accept_final(now)

    def abort(self, code: int, message: str) -> None:
        """End now; a running transfer tells the server (ERROR), if it ever answered."""
        if self.transfer is not None:
            self.transfer.abort(code, message)
        self.machine.go(CT.ABORT)

    # ---- internals --------------------------------------------------------------------

    def _end(self, error: FtransferError) -> None:
        self.machine.go(CT.REFUSED)
        self._events.append(failure(error))

    def _on_error(self, packet: Error, now: float) -> None:
        if self.request.options and not self._fell_back and packet.code in FALLBACK_CODES:
            self._fell_back = True
            self.request = Request(
                write=self.request.write, filename=self.request.filename, mode=self.request.mode
            )
            self._send_request(now)
            return
        self._end(error_from_tftp(packet.code, packet.message))

    def _on_oack(self, packet: OptionAck, address: Address, now: float) -> None:
        try:
            params = check_oack(self.request.options, packet.options)
        except OptionError as exc:
            self._out.append((encode_error(ErrorCode.OPTION_REFUSED, str(exc)), address))
            self._end(RemoteProtocolError(f"tftp: {exc}"))
            return
        self._start(params, address, now, oack=True)

    def _start(self, params: Params, peer: Address, now: float, *, oack: bool = False) -> None:
        give_up = self._give_up_s
        self.machine.go(CT.ANSWERED)
        if self._read is not None:
            self.transfer = BlockSender(
                self._read, peer, params, now=now, give_up_s=give_up, proven=True, rtt=self._rtt
            )
        else:
            self.transfer = BlockReceiver(
                peer,
                params,
                now=now,
                give_up_s=give_up,
                first=encode_ack(0) if oack else None,
                proven=True,
                rtt=self._rtt,
            )
        self.transfer.stats.datagrams_sent += self.stats.datagrams_sent
        self.transfer.stats.retransmitted += self.stats.retransmitted
        self.stats = self.transfer.stats


__all__ = ["FALLBACK_CODES", "Failed", "TftpClient"]
