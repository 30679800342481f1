"""UDP datagram codec: header, body per type, and a per-datagram integrity check.

Theory of operation
-------------------
A datagram is ``magic u8 (0xF7) | type u8 | session u64 | body | check u64`` where
``check`` is the xxh3-64 of every byte before it (protocol.md, "UDP"). A datagram
whose check fails, whose magic or type is unknown, or whose body does not parse is
*dropped and counted*, never raised to the user: on UDP, junk is weather, not a
protocol violation. ``decode_untrusted`` may raise only ``PacketError``.

Sizes: the header and check cost 18 bytes and DATA's chunk and transmission
numbers 16 more, so the default 1,400-byte payload makes 1,434-byte datagrams,
which fit a 1,500-byte MTU over IPv6 (1,452 bytes of UDP payload) unfragmented.
INITIAL must be padded to MIN_INITIAL_BYTES (a server drops a shorter one) so that
the server's unvalidated answers (RETRY, or an ERROR ACCEPT) stay far below three
times what the client sent.

Extensions: the bytes after INITIAL's path are padding to old peers; an
``extensions`` byte there (0 in padding) says what follows (bit 0: the permission
bits ``mode u16``; bit 1: exclusive, no-clobber; bit 2: ``max_rate u64``, the
most bytes per second the server may send). A code-0 ACCEPT carries no message,
so its tail holds the same kind of byte (bit 0: ``mode u16`` follows; bit 2:
``max_rate u64``, the most the client may send). Bit 3, in both: a resumed
transfer, ``Resumption`` (``offset u64``, ``transfer_id[16]``, ``digest[16]``)
follows, last.
Peers that do not know them ignore both, in either direction.

Hot path: DATA is decoded into plain tuples (``decode_data``) and encoded without
building a record (``encode_data``): one datagram costs a few microseconds.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from ..._records import Record
from ...checksum import DIGEST_BYTES, datagram_check
from ...config import UDP_CHUNK_BYTES, UDP_MAX_CHUNK_BYTES, UDP_MIN_CHUNK_BYTES
from ...errors import RemoteProtocolError

MAGIC = 0xF7
HEADER = struct.Struct(">BBQ")
CHECK = struct.Struct(">Q")
OVERHEAD_BYTES = HEADER.size + CHECK.size
DATA_OVERHEAD_BYTES = OVERHEAD_BYTES + 16
"""Bytes a DATA datagram adds to its payload."""
MIN_INITIAL_BYTES = 1200
"""INITIAL datagrams are padded to this size (anti-amplification, as QUIC)."""
DEFAULT_CHUNK_BYTES = UDP_CHUNK_BYTES
"""Payload per DATA datagram unless both sides agree on more (loopback, jumbo)."""
MAX_CHUNK_BYTES = UDP_MAX_CHUNK_BYTES
MIN_CHUNK_BYTES = UDP_MIN_CHUNK_BYTES
MAX_SACK_RANGES = 32
"""Ranges an ACK may carry (the newest ones)."""
MAX_COOKIE_BYTES = 64


class PacketError(RemoteProtocolError):
    """A datagram that does not decode: the session drops and counts it."""


class PacketType(IntEnum):
    INITIAL = 0x01
    RETRY = 0x02
    ACCEPT = 0x03
    DATA = 0x10
    ACK = 0x11
    FIN = 0x12
    RESULT = 0x13
    CLOSE = 0x14
    PING = 0x20
    PONG = 0x21


class Operation(IntEnum):
    PUT = 1
    GET = 2
    LIST = 3
    STAT = 4
    REMOVE = 5
    MKDIR = 6
    """No data; INITIAL's ``size`` is 1 to create missing parents (``mkdir -p``)."""


EXT_MODE = 0x01
"""Extensions byte: ``mode u16`` follows."""
EXT_EXCLUSIVE = 0x02
"""Extensions byte (INITIAL): refuse to replace an existing file."""
EXT_RATE = 0x04
"""Extensions byte: ``max_rate u64`` follows (after ``mode`` if both): the most
bytes per second the peer may send in this session (INITIAL: the server, for a
client's rate limit on a download; ACCEPT: the client, for the server's limit on
an upload)."""
EXT_RESUME = 0x08
"""Extensions byte: a ``Resumption`` follows (after the others)."""
_RATE = struct.Struct("!Q")
_RESUME = struct.Struct("!Q16s16s")
MAX_RATE = 2**63 - 1


class Resumption(Record):
    """A resumable transfer (protocol.md U3.1). In INITIAL for PUT: the offset the
    client could resume from (0: a fresh resumable upload), its transfer id and
    its source's first-chunk digest; for GET: the offset of the client's partial,
    zeros, and the prefix digest of its chunks (INITIAL's size and mtime_ns are
    then the file's as the client knew it). In ACCEPT: the offset the session's
    data start at, zeros, and (PUT) the prefix digest of the server's chunks."""

    offset: int
    transfer_id: bytes
    digest: bytes


class Initial(Record):
    nonce: int
    operation: int
    """An ``Operation``; kept as the number so that an unknown one can be refused."""
    chunk_bytes: int
    window: int
    cookie: bytes
    size: int
    mtime_ns: int
    path: str
    mode: int | None = None
    """Permission bits of the file a PUT sends, when the client says."""
    exclusive: bool = False
    max_rate: int | None = None
    """Bytes per second the server may send (the client's rate limit), if any."""
    resume: Resumption | None = None


class Retry(Record):
    nonce: int
    cookie: bytes


class Accept(Record):
    nonce: int
    code: int
    """0: accepted; otherwise the error code (errors.py) and the session is over."""
    chunk_bytes: int
    window: int
    size: int
    mtime_ns: int
    message: str
    mode: int | None = None
    """Permission bits of the file the server sends (code 0 only)."""
    max_rate: int | None = None
    """Bytes per second the client may send (the server's rate limit; code 0 only)."""
    resume: Resumption | None = None
    """Where a resumed session's data start (code 0 only)."""


class Data(Record):
    """DATA as a record, for tests and the slow path; the hot path uses
    ``decode_data`` and ``encode_data`` and builds no record per datagram."""

    seq: int
    """Chunk number: the payload is bytes seq * chunk_bytes onwards."""
    tx: int
    """Transmission number: increases with every DATA sent, retransmissions included."""
    payload: bytes | memoryview


class Ack(Record):
    cumulative: int
    """Every chunk below this has arrived."""
    largest_tx: int
    """The largest transmission number received: loss detection without ambiguity."""
    window: int
    """Chunks at and beyond ``cumulative`` the receiver can buffer."""
    delay_us: int
    ranges: tuple[tuple[int, int], ...]
    """Received ranges [start, stop) above ``cumulative``, newest first."""


class Fin(Record):
    size: int
    digest: bytes


class Result(Record):
    code: int
    digest: bytes
    message: str


class Close(Record):
    code: int
    message: str


class Ping(Record):
    seq: int
    timestamp_ns: int
    padding: int


class Pong(Record):
    seq: int
    timestamp_ns: int
    padding: int


Body = Initial | Retry | Accept | Data | Ack | Fin | Result | Close | Ping | Pong


Packet = tuple[int, Body]
"""A decoded datagram: (session id, body). A plain tuple: one is made per ACK."""


_INITIAL = struct.Struct(">QBHIB")
_INITIAL_TAIL = struct.Struct(">QqH")
_RETRY = struct.Struct(">QB")
_ACCEPT = struct.Struct(">QHHIQq")
_ACK = struct.Struct(">QQIIB")
_DATA = struct.Struct(">QQ")
_DATA_HEAD = struct.Struct(">BBQQQ")  # HEADER + _DATA in one call
_RANGE = struct.Struct(">QI")
_ECHO = struct.Struct(">IQ")
_CODE = struct.Struct(">H")
_U64 = struct.Struct(">Q")


# ---- encoding -----------------------------------------------------------------------


def _seal(kind: PacketType, session: int, body: bytes) -> bytes:
    head = HEADER.pack(MAGIC, kind, session) + body
    return head + CHECK.pack(datagram_check(head))


def _text(text: str) -> bytes:
    return text.encode("utf-8", errors="replace")


def encode_data(session: int, seq: int, tx: int, payload: bytes | memoryview) -> bytes:
    """A DATA datagram, without building a Data first (the sender's hot path)."""
    head = _DATA_HEAD.pack(MAGIC, PacketType.DATA, session, seq, tx) + payload
    return head + CHECK.pack(datagram_check(head))


def encode(session: int, body: Body) -> bytes:
    """The datagram for ``body`` in ``session``."""
    match body:
        case Data(seq=seq, tx=tx, payload=payload):
            return encode_data(session, seq, tx, payload)
        case Ack(cumulative=cum, largest_tx=largest, window=win, delay_us=delay, ranges=ranges):
            ranges = ranges[:MAX_SACK_RANGES]
            parts = [_ACK.pack(cum, largest, win, min(delay, 2**32 - 1), len(ranges))]
            parts += [_RANGE.pack(start, stop - start) for start, stop in ranges]
            return _seal(PacketType.ACK, session, b"".join(parts))
        case Initial():
            return _seal(PacketType.INITIAL, session, _initial_body(body))
        case Retry(nonce=nonce, cookie=cookie):
            return _seal(PacketType.RETRY, session, _RETRY.pack(nonce, len(cookie)) + cookie)
        case Accept():
            head = _ACCEPT.pack(
                body.nonce, body.code, body.chunk_bytes, body.window, body.size, body.mtime_ns
            )
            tail = (
                _text(body.message)
                if body.code
                else _extensions(body.mode, False, body.max_rate, body.resume)
            )
            return _seal(PacketType.ACCEPT, session, head + tail)
        case Fin(size=size, digest=digest):
            return _seal(PacketType.FIN, session, _U64.pack(size) + digest)
        case Result(code=code, digest=digest, message=message):
            return _seal(PacketType.RESULT, session, _CODE.pack(code) + digest + _text(message))
        case Close(code=code, message=message):
            return _seal(PacketType.CLOSE, session, _CODE.pack(code) + _text(message))
        case Ping(seq=seq, timestamp_ns=ts, padding=pad):
            return _seal(PacketType.PING, session, _ECHO.pack(seq, ts) + bytes(pad))
        case Pong(seq=seq, timestamp_ns=ts, padding=pad):
            return _seal(PacketType.PONG, session, _ECHO.pack(seq, ts) + bytes(pad))
    raise TypeError(f"cannot encode {body!r}")


def _extensions(
    mode: int | None,
    exclusive: bool,
    max_rate: int | None = None,
    resume: Resumption | None = None,
) -> bytes:
    flags = (
        (EXT_MODE if mode is not None else 0)
        | (EXT_EXCLUSIVE if exclusive else 0)
        | (EXT_RATE if max_rate else 0)
        | (EXT_RESUME if resume is not None else 0)
    )
    if not flags:
        return b""
    out = bytes([flags]) + (_CODE.pack(mode & 0o777) if mode is not None else b"")
    out += _RATE.pack(min(max_rate, MAX_RATE)) if max_rate else b""
    if resume is not None:
        out += _RESUME.pack(resume.offset, resume.transfer_id, resume.digest)
    return out


class _Extensions(Record):
    mode: int | None = None
    exclusive: bool = False
    max_rate: int | None = None
    resume: Resumption | None = None


def _parse_extensions(raw: memoryview | bytes) -> _Extensions:
    """The extensions byte and what follows (padding: none)."""
    if not raw or not raw[0]:
        return _Extensions()
    flags = raw[0]
    mode = max_rate = None
    resume = None
    offset = 1
    if flags & EXT_MODE:
        if len(raw) < offset + _CODE.size:
            raise PacketError("extensions are truncated")
        (mode,) = _CODE.unpack_from(raw, offset)
        mode &= 0o777
        offset += _CODE.size
    if flags & EXT_RATE:
        if len(raw) < offset + _RATE.size:
            raise PacketError("extensions are truncated")
        (max_rate,) = _RATE.unpack_from(raw, offset)
        max_rate = max_rate or None
        offset += _RATE.size
    if flags & EXT_RESUME:
        if len(raw) < offset + _RESUME.size:
            raise PacketError("extensions are truncated")
        at, transfer_id, digest = _RESUME.unpack_from(raw, offset)
        if at >= 2**63:
            raise PacketError("resume offset out of range")
        resume = Resumption(offset=at, transfer_id=transfer_id, digest=digest)
    return _Extensions(
        mode=mode, exclusive=bool(flags & EXT_EXCLUSIVE), max_rate=max_rate, resume=resume
    )


def _initial_body(body: Initial) -> bytes:
    path = body.path.encode("utf-8")
    raw = (
        _INITIAL.pack(body.nonce, body.operation, body.chunk_bytes, body.window, len(body.cookie))
        + body.cookie
        + _INITIAL_TAIL.pack(body.size, max(body.mtime_ns, -1), len(path))  # -1: before 1970
        + path
        + _extensions(body.mode, body.exclusive, body.max_rate, body.resume)
    )
    padding = MIN_INITIAL_BYTES - OVERHEAD_BYTES - len(raw)
    return raw + bytes(max(padding, 0))


# ---- decoding (untrusted) ------------------------------------------------------------


def decode_untrusted(datagram: bytes | memoryview) -> Packet:
    """Check and parse one datagram; raises only PacketError."""
    if len(datagram) < OVERHEAD_BYTES:
        raise PacketError("datagram too short")
    view = memoryview(datagram)
    (check,) = CHECK.unpack_from(view, len(view) - CHECK.size)
    if datagram_check(view[: len(view) - CHECK.size]) != check:
        raise PacketError("integrity check failed")
    magic, kind, session = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise PacketError("not an ftransfer datagram")
    body = view[HEADER.size : len(view) - CHECK.size]
    try:
        return session, _BODY_DECODERS[kind](body)
    except KeyError:
        raise PacketError(f"unknown datagram type 0x{kind:02x}") from None
    except (struct.error, ValueError) as exc:
        raise PacketError(f"malformed datagram: {exc}") from None


def decode_data(datagram: bytes | memoryview) -> tuple[int, int, int, memoryview] | None:
    """(session, seq, tx, payload) of an intact DATA datagram, else None: then
    ``decode_untrusted`` decodes it or says what is wrong. The receivers' hot path:
    one struct call and plain tuples (building Packet and Data cost ~0.7 us more)."""
    n = len(datagram)
    if n < DATA_OVERHEAD_BYTES:
        return None
    view = memoryview(datagram)
    magic, kind, session, seq, tx = _DATA_HEAD.unpack_from(view)
    if kind != PacketType.DATA or magic != MAGIC:
        return None
    if datagram_check(view[: n - CHECK.size]) != CHECK.unpack_from(view, n - CHECK.size)[0]:
        return None
    return session, seq, tx, view[_DATA_HEAD.size : n - CHECK.size]


def _initial(raw: memoryview) -> Body:
    nonce, op, chunk, window, cookie_len = _INITIAL.unpack_from(raw)
    if cookie_len > MAX_COOKIE_BYTES:
        raise PacketError("cookie too long")
    offset = _INITIAL.size
    cookie = bytes(raw[offset : offset + cookie_len])
    offset += cookie_len
    size, mtime_ns, path_len = _INITIAL_TAIL.unpack_from(raw, offset)
    offset += _INITIAL_TAIL.size
    if len(raw) < offset + path_len or len(cookie) != cookie_len:
        raise PacketError("INITIAL is truncated")
    if size >= 2**63:
        raise PacketError("size out of range")
    ext = _parse_extensions(raw[offset + path_len :])
    return Initial(
        nonce=nonce,
        operation=op,
        chunk_bytes=chunk,
        window=window,
        cookie=cookie,
        size=size,
        mtime_ns=mtime_ns,
        # Kept undecodable bytes as surrogates: a path that is not UTF-8 is the
        # endpoint's to refuse with a reason, after the cookie (request_problem).
        path=bytes(raw[offset : offset + path_len]).decode("utf-8", "surrogateescape"),
        mode=ext.mode,
        exclusive=ext.exclusive,
        max_rate=ext.max_rate,
        resume=ext.resume,
    )


def _retry(raw: memoryview) -> Body:
    nonce, cookie_len = _RETRY.unpack_from(raw)
    cookie = bytes(raw[_RETRY.size : _RETRY.size + cookie_len])
    if len(cookie) != cookie_len or cookie_len > MAX_COOKIE_BYTES:
        raise PacketError("RETRY cookie is malformed")
    return Retry(nonce=nonce, cookie=cookie)


def _accept(raw: memoryview) -> Body:
    nonce, code, chunk, window, size, mtime_ns = _ACCEPT.unpack_from(raw)
    tail = raw[_ACCEPT.size :]
    ext = _Extensions() if code else _parse_extensions(tail)
    return Accept(
        nonce=nonce,
        code=code,
        chunk_bytes=chunk,
        window=window,
        size=size,
        mtime_ns=mtime_ns,
        message=bytes(tail).decode("utf-8", "replace") if code else "",
        mode=ext.mode,
        max_rate=ext.max_rate,
        resume=ext.resume,
    )


def _data(raw: memoryview) -> Body:
    seq, tx = _DATA.unpack_from(raw)
    return Data(seq=seq, tx=tx, payload=raw[_DATA.size :])


def _ack(raw: memoryview) -> Body:
    cumulative, largest_tx, window, delay, count = _ACK.unpack_from(raw)
    if count > MAX_SACK_RANGES or len(raw) != _ACK.size + count * _RANGE.size:
        raise PacketError("ACK ranges are malformed")
    ranges = []
    for i in range(count):
        start, length = _RANGE.unpack_from(raw, _ACK.size + i * _RANGE.size)
        if length == 0 or start < cumulative:
            raise PacketError("ACK range is empty or below the cumulative point")
        ranges.append((start, start + length))
    return Ack(
        cumulative=cumulative,
        largest_tx=largest_tx,
        window=window,
        delay_us=delay,
        ranges=tuple(ranges),
    )


def _fin(raw: memoryview) -> Body:
    if len(raw) != 8 + DIGEST_BYTES:
        raise PacketError("FIN has the wrong length")
    (size,) = _U64.unpack_from(raw)
    return Fin(size=size, digest=bytes(raw[8:]))


def _result(raw: memoryview) -> Body:
    if len(raw) < 2 + DIGEST_BYTES:
        raise PacketError("RESULT is truncated")
    (code,) = _CODE.unpack_from(raw)
    return Result(
        code=code,
        digest=bytes(raw[2 : 2 + DIGEST_BYTES]),
        message=bytes(raw[2 + DIGEST_BYTES :]).decode("utf-8", "replace"),
    )


def _close(raw: memoryview) -> Body:
    (code,) = _CODE.unpack_from(raw)
    return Close(code=code, message=bytes(raw[2:]).decode("utf-8", "replace"))


def _ping(raw: memoryview) -> Body:
    seq, ts = _ECHO.unpack_from(raw)
    return Ping(seq=seq, timestamp_ns=ts, padding=len(raw) - _ECHO.size)


def _pong(raw: memoryview) -> Body:
    seq, ts = _ECHO.unpack_from(raw)
    return Pong(seq=seq, timestamp_ns=ts, padding=len(raw) - _ECHO.size)


_BODY_DECODERS = {
    PacketType.INITIAL: _initial,
    PacketType.RETRY: _retry,
    PacketType.ACCEPT: _accept,
    PacketType.DATA: _data,
    PacketType.ACK: _ack,
    PacketType.FIN: _fin,
    PacketType.RESULT: _result,
    PacketType.CLOSE: _close,
    PacketType.PING: _ping,
    PacketType.PONG: _pong,
}
