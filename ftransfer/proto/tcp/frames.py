"""TCP frame codec: bytes <-> events, with no state beyond one frame.

Theory of operation: a frame is ``u8 type | u32 length | payload`` (big-endian,
protocol.md "Framing"). ``parse_header_untrusted`` checks the type and the declared
length against MAX_FRAME_BYTES / MAX_CONTROL_BYTES *before* anything is buffered, so
a hostile 4 GiB length is refused at once. DATA payloads are never decoded here: the
session streams them. Control payloads are parsed by ``decode_untrusted``, which may
raise only ``RemoteProtocolError``; ``encode`` turns an event back into bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum

from ...checksum import DIGEST_BYTES
from ...config import (
    FRAME_HEADER_BYTES,
    HELLO_MAGIC,
    MAX_CONTROL_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_FRAME_BYTES,
    MAX_PASSWORD_BYTES,
)
from ...errors import LocalProtocolError, RemoteProtocolError
from ..events import Failed
from . import events as ev


class FrameType(IntEnum):
    """Frame type byte (protocol.md, "Frame types")."""

    HELLO = 0x01
    HELLO_OK = 0x02
    LOGIN = 0x03
    PUT = 0x10
    DATA = 0x11
    END = 0x12
    ABORT = 0x13
    PUT_OK = 0x14
    PARTIAL = 0x15
    PARTIAL_OK = 0x16
    PUT_AT = 0x17
    GET = 0x20
    FILE = 0x21
    VERIFIED = 0x22
    GET_AT = 0x23
    FILE_AT = 0x24
    LIST = 0x30
    ENTRIES = 0x31
    LIST_END = 0x32
    STAT = 0x40
    STAT_OK = 0x41
    REMOVE = 0x50
    MKDIR = 0x51
    MOVE = 0x52
    OK = 0x60
    TICKET = 0x70
    TICKET_OK = 0x71
    PING = 0x72
    PONG = 0x73
    ERROR = 0x7F


_HEADER = struct.Struct(">BI")
_HELLO = struct.Struct(">4sHH")
_HELLO_OK = struct.Struct(">HII")
_PUT = struct.Struct(">QqBH")
_FILE = struct.Struct(">QqH")
_PUT_AT = struct.Struct(">QqBHQ16s16s")
_PARTIAL = struct.Struct(">Qq16s16s")
_PARTIAL_OK = struct.Struct(">Q16s")
_GET_AT = struct.Struct(">QQq16s")
_FILE_AT = struct.Struct(">QqHQ")
_ENTRY = struct.Struct(">BQqHH")
_MOVE = struct.Struct(">BH")
_U16 = struct.Struct(">H")
_TICKET_OK = struct.Struct(">QI32s")
_ECHO = struct.Struct(">IQ")
MODE_MASK = 0o777
"""Only permission bits cross the wire: never setuid, setgid or sticky."""
_MAX_SIZE = 2**63 - 1
NO_MTIME = -1
"""PUT's mtime_ns that keeps the server's clock; below it is a protocol error, and a
sender sends it for a time before 1970, which the field cannot carry."""
_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


def header(frame_type: FrameType, length: int) -> bytes:
    """The 5-byte header of a frame."""
    return _HEADER.pack(frame_type, length)


def parse_header_untrusted(raw: bytes | memoryview) -> tuple[FrameType, int]:
    """Validate a frame header from the peer; returns (type, payload length)."""
    type_byte, length = _HEADER.unpack(raw[:FRAME_HEADER_BYTES])
    if type_byte not in _KNOWN_TYPES:
        raise RemoteProtocolError(f"unknown frame type 0x{type_byte:02x}")
    if length > MAX_FRAME_BYTES:
        raise RemoteProtocolError(f"frame length {length} exceeds {MAX_FRAME_BYTES}")
    if type_byte != FrameType.DATA and length > MAX_CONTROL_BYTES:
        raise RemoteProtocolError(f"control frame length {length} exceeds {MAX_CONTROL_BYTES}")
    return FrameType(type_byte), length


# ---- decoding (untrusted) ------------------------------------------------------


def _text_untrusted(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} is not valid UTF-8") from None


def _fixed_untrusted(raw: bytes, fmt: struct.Struct, what: str) -> tuple[object, ...]:
    if len(raw) < fmt.size:
        raise RemoteProtocolError(f"{what} frame is truncated")
    return fmt.unpack_from(raw)


def _digest_untrusted(raw: bytes, what: str) -> bytes:
    if len(raw) != DIGEST_BYTES:
        raise RemoteProtocolError(f"{what} must carry a {DIGEST_BYTES}-byte digest")
    return raw


def _empty_untrusted(raw: bytes, what: str) -> None:
    if raw:
        raise RemoteProtocolError(f"{what} frame must be empty")


def _size_untrusted(value: object, what: str) -> int:
    assert isinstance(value, int)
    if value > _MAX_SIZE:
        raise RemoteProtocolError(f"{what} size is out of range")
    return value


def _hello(raw: bytes) -> ev.Event:
    if len(raw) != _HELLO.size:
        raise RemoteProtocolError("HELLO has the wrong length")
    magic, low, high = _HELLO.unpack(raw)
    if magic != HELLO_MAGIC:
        raise RemoteProtocolError("not an ftransfer peer (bad HELLO magic)")
    return ev.HelloOffered(min_version=low, max_version=high)  # an empty range: no version


def _hello_ok(raw: bytes) -> ev.Event:
    version, max_frame, flags = _fixed_untrusted(raw, _HELLO_OK, "HELLO_OK")
    assert isinstance(version, int) and isinstance(max_frame, int) and isinstance(flags, int)
    return ev.HelloAccepted(
        version=version,
        max_frame_bytes=max_frame,
        read_only=bool(flags & 1),
        login_required=bool(flags & 2),
    )


def _login(raw: bytes) -> ev.Event:
    if len(raw) < 1 or len(raw) < 1 + raw[0]:
        raise RemoteProtocolError("LOGIN frame is truncated")
    length = raw[0]
    if length == 0:
        raise RemoteProtocolError("LOGIN has an empty user name")
    password = raw[1 + length :]
    if len(password) > MAX_PASSWORD_BYTES:
        raise RemoteProtocolError(f"LOGIN password longer than {MAX_PASSWORD_BYTES} bytes")
    return ev.LoginRequested(
        user=_text_untrusted(raw[1 : 1 + length], "LOGIN user"),
        password=_text_untrusted(password, "LOGIN password"),
    )


def _put(raw: bytes) -> ev.Event:
    size, mtime_ns, flags, mode = _fixed_untrusted(raw, _PUT, "PUT")
    assert isinstance(mtime_ns, int) and isinstance(flags, int) and isinstance(mode, int)
    if mtime_ns < NO_MTIME:
        raise RemoteProtocolError(f"PUT mtime_ns {mtime_ns} is below -1 (-1: the server's clock)")
    path = _text_untrusted(raw[_PUT.size :], "PUT path")
    return ev.PutRequested(
        path=path,
        size=_size_untrusted(size, "PUT"),
        mtime_ns=mtime_ns,
        mode=mode & MODE_MASK,
        exclusive=bool(flags & 1),
    )


def _file(raw: bytes) -> ev.Event:
    if len(raw) != _FILE.size:
        raise RemoteProtocolError("FILE has the wrong length")
    size, mtime_ns, mode = _FILE.unpack(raw)
    return ev.FileStarted(
        size=_size_untrusted(size, "FILE"), mtime_ns=mtime_ns, mode=mode & MODE_MASK
    )


def _offset_untrusted(offset: int, size: int, what: str) -> int:
    if offset > size:
        raise RemoteProtocolError(f"{what} offset {offset} is beyond the size {size}")
    return offset


def _put_at(raw: bytes) -> ev.Event:
    size, mtime_ns, flags, mode, offset, tid, first = _fixed_untrusted(raw, _PUT_AT, "PUT_AT")
    assert isinstance(mtime_ns, int) and isinstance(flags, int) and isinstance(mode, int)
    assert isinstance(offset, int) and isinstance(tid, bytes) and isinstance(first, bytes)
    if mtime_ns < NO_MTIME:
        raise RemoteProtocolError(f"PUT_AT mtime_ns {mtime_ns} is below -1")
    _transfer_id_untrusted(tid, "PUT_AT")
    size = _size_untrusted(size, "PUT_AT")
    return ev.PutRequested(
        path=_text_untrusted(raw[_PUT_AT.size :], "PUT_AT path"),
        size=size,
        mtime_ns=mtime_ns,
        mode=mode & MODE_MASK,
        exclusive=bool(flags & 1),
        offset=_offset_untrusted(offset, size, "PUT_AT"),
        transfer_id=tid,
        first_digest=first,
    )


def _transfer_id_untrusted(tid: bytes, what: str) -> bytes:
    if tid == bytes(len(tid)):
        raise RemoteProtocolError(f"{what} has an all-zero transfer id")
    return tid


def _partial(raw: bytes) -> ev.Event:
    size, mtime_ns, tid, first = _fixed_untrusted(raw, _PARTIAL, "PARTIAL")
    assert isinstance(mtime_ns, int) and isinstance(tid, bytes) and isinstance(first, bytes)
    if mtime_ns < NO_MTIME:
        raise RemoteProtocolError(f"PARTIAL mtime_ns {mtime_ns} is below -1")
    _transfer_id_untrusted(tid, "PARTIAL")
    return ev.PartialRequested(
        path=_text_untrusted(raw[_PARTIAL.size :], "PARTIAL path"),
        size=_size_untrusted(size, "PARTIAL"),
        mtime_ns=mtime_ns,
        transfer_id=tid,
        first_digest=first,
    )


def _partial_ok(raw: bytes) -> ev.Event:
    if len(raw) != _PARTIAL_OK.size:
        raise RemoteProtocolError("PARTIAL_OK has the wrong length")
    offset, prefix = _PARTIAL_OK.unpack(raw)
    return ev.PartialHeld(offset=_size_untrusted(offset, "PARTIAL_OK"), prefix=prefix)


def _get_at(raw: bytes) -> ev.Event:
    offset, size, mtime_ns, prefix = _fixed_untrusted(raw, _GET_AT, "GET_AT")
    assert isinstance(offset, int) and isinstance(mtime_ns, int) and isinstance(prefix, bytes)
    if mtime_ns < NO_MTIME:
        raise RemoteProtocolError(f"GET_AT mtime_ns {mtime_ns} is below -1")
    size = _size_untrusted(size, "GET_AT")
    return ev.GetRequested(
        path=_text_untrusted(raw[_GET_AT.size :], "GET_AT path"),
        offset=_offset_untrusted(offset, size, "GET_AT"),
        size=size,
        mtime_ns=mtime_ns,
        prefix=prefix,
    )


def _file_at(raw: bytes) -> ev.Event:
    if len(raw) != _FILE_AT.size:
        raise RemoteProtocolError("FILE_AT has the wrong length")
    size, mtime_ns, mode, offset = _FILE_AT.unpack(raw)
    size = _size_untrusted(size, "FILE_AT")
    return ev.FileStarted(
        size=size,
        mtime_ns=mtime_ns,
        mode=mode & MODE_MASK,
        offset=_offset_untrusted(offset, size, "FILE_AT"),
    )


def _entry_untrusted(raw: bytes, offset: int) -> tuple[ev.Entry, int]:
    if len(raw) - offset < _ENTRY.size:
        raise RemoteProtocolError("ENTRIES frame is truncated")
    kind, size, mtime_ns, mode, name_len = _ENTRY.unpack_from(raw, offset)
    start = offset + _ENTRY.size
    if len(raw) - start < name_len:
        raise RemoteProtocolError("ENTRIES name is truncated")
    if kind not in ev.EntryKind.__members__.values():
        raise RemoteProtocolError(f"unknown entry kind {kind}")
    name = _text_untrusted(raw[start : start + name_len], "entry name")
    entry = ev.Entry(
        name=name,
        kind=ev.EntryKind(kind),
        size=_size_untrusted(size, "entry"),
        mtime_ns=mtime_ns,
        mode=mode & MODE_MASK,
    )
    return entry, start + name_len


def _entries(raw: bytes) -> ev.Event:
    entries: list[ev.Entry] = []
    offset = 0
    while offset < len(raw):
        entry, offset = _entry_untrusted(raw, offset)
        entries.append(entry)
    return ev.Listed(entries=tuple(entries))


def _stat_ok(raw: bytes) -> ev.Event:
    if len(raw) < _ENTRY.size + DIGEST_BYTES:
        raise RemoteProtocolError("STAT_OK frame is truncated")
    entry, offset = _entry_untrusted(raw[:-DIGEST_BYTES], 0)
    if offset != len(raw) - DIGEST_BYTES:
        raise RemoteProtocolError("STAT_OK has trailing bytes")
    return ev.Stated(entry=entry, digest=raw[-DIGEST_BYTES:])


def _mkdir(raw: bytes) -> ev.Event:
    if not raw:
        raise RemoteProtocolError("MKDIR frame is truncated")
    return ev.MkdirRequested(parents=bool(raw[0] & 1), path=_text_untrusted(raw[1:], "MKDIR path"))


def _move(raw: bytes) -> ev.Event:
    flags, src_len = _fixed_untrusted(raw, _MOVE, "MOVE")
    assert isinstance(flags, int) and isinstance(src_len, int)
    start = _MOVE.size
    if len(raw) - start < src_len:
        raise RemoteProtocolError("MOVE source is truncated")
    source = _text_untrusted(raw[start : start + src_len], "MOVE source")
    return ev.MoveRequested(
        source=source,
        target=_text_untrusted(raw[start + src_len :], "MOVE target"),
        exclusive=bool(flags & 1),
    )


def _ticket_ok(raw: bytes) -> ev.Event:
    if len(raw) != _TICKET_OK.size:
        raise RemoteProtocolError(f"TICKET_OK must be {_TICKET_OK.size} bytes")
    ticket, lifetime_s, secret = _TICKET_OK.unpack(raw)
    return ev.TicketIssued(ticket=ticket, lifetime_s=lifetime_s, secret=secret)


def _echo(make: Callable[..., ev.Event], what: str) -> Callable[[bytes], ev.Event]:
    def parse(raw: bytes) -> ev.Event:
        if len(raw) != _ECHO.size:
            raise RemoteProtocolError(f"{what} must be {_ECHO.size} bytes")
        seq, timestamp_ns = _ECHO.unpack(raw)
        return make(seq=seq, timestamp_ns=timestamp_ns)

    return parse


def _error(raw: bytes) -> ev.Event:
    (code,) = _fixed_untrusted(raw, _U16, "ERROR")
    assert isinstance(code, int)
    message = raw[2:].decode("utf-8", errors="replace")
    return Failed(code=code, message=message)


def _empty(make: Callable[[], ev.Event], what: str) -> Callable[[bytes], ev.Event]:
    def parse(raw: bytes) -> ev.Event:
        _empty_untrusted(raw, what)
        return make()

    return parse


def _text(make: Callable[[str], ev.Event], what: str) -> Callable[[bytes], ev.Event]:
    return lambda raw: make(_text_untrusted(raw, f"{what} path"))


def _digested(make: Callable[[bytes], ev.Event], what: str) -> Callable[[bytes], ev.Event]:
    return lambda raw: make(_digest_untrusted(raw, what))


_DECODERS: dict[FrameType, Callable[[bytes], ev.Event]] = {
    FrameType.HELLO: _hello,
    FrameType.HELLO_OK: _hello_ok,
    FrameType.LOGIN: _login,
    FrameType.PUT: _put,
    FrameType.END: _digested(lambda d: ev.FileEnded(digest=d), "END"),
    FrameType.ABORT: _empty(ev.FileAborted, "ABORT"),
    FrameType.PUT_OK: _digested(lambda d: ev.PutCommitted(digest=d), "PUT_OK"),
    FrameType.GET: _text(lambda p: ev.GetRequested(path=p), "GET"),
    FrameType.FILE: _file,
    FrameType.PUT_AT: _put_at,
    FrameType.PARTIAL: _partial,
    FrameType.PARTIAL_OK: _partial_ok,
    FrameType.GET_AT: _get_at,
    FrameType.FILE_AT: _file_at,
    FrameType.VERIFIED: _digested(lambda d: ev.DownloadVerified(digest=d), "VERIFIED"),
    FrameType.LIST: _text(lambda p: ev.ListRequested(path=p), "LIST"),
    FrameType.ENTRIES: _entries,
    FrameType.LIST_END: _empty(ev.ListEnded, "LIST_END"),
    FrameType.STAT: _text(lambda p: ev.StatRequested(path=p), "STAT"),
    FrameType.STAT_OK: _stat_ok,
    FrameType.REMOVE: _text(lambda p: ev.RemoveRequested(path=p), "REMOVE"),
    FrameType.MKDIR: _mkdir,
    FrameType.MOVE: _move,
    FrameType.OK: _empty(ev.Done, "OK"),
    FrameType.TICKET: _empty(ev.TicketRequested, "TICKET"),
    FrameType.TICKET_OK: _ticket_ok,
    FrameType.PING: _echo(ev.PingRequested, "PING"),
    FrameType.PONG: _echo(ev.Ponged, "PONG"),
    FrameType.ERROR: _error,
}


def decode_untrusted(frame_type: FrameType, payload: bytes) -> ev.Event:
    """Parse a control frame's payload; raises only RemoteProtocolError."""
    try:
        return _DECODERS[frame_type](payload)
    except KeyError:
        raise RemoteProtocolError(f"frame type {frame_type.name} has no control payload") from None
    except struct.error as exc:  # defensive: every unpack is length-checked first
        raise RemoteProtocolError(f"malformed {frame_type.name} frame: {exc}") from None


# ---- encoding ---------------------------------------------------------------------


def _path_bytes(path: str) -> bytes:
    try:
        return path.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"name {path!r} is not valid UTF-8") from None


def _entry_name(entry: ev.Entry) -> bytes:
    return entry.name.encode("utf-8", errors="replace")


def entry_bytes(entry: ev.Entry) -> int:
    """The length of ``encode_entry(entry)``, without building it."""
    return _ENTRY.size + len(_entry_name(entry))


def encode_entry(entry: ev.Entry) -> bytes:
    """One entry of an ENTRIES frame (stores list only names that are valid UTF-8;
    anything else would become U+FFFD here)."""
    name = _entry_name(entry)
    mode = entry.mode & MODE_MASK
    return _ENTRY.pack(entry.kind, entry.size, entry.mtime_ns, mode, len(name)) + name


def truncate_utf8(text: str, limit: int) -> bytes:
    """``text`` in UTF-8, cut to at most ``limit`` bytes on a character boundary."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return data
    cut = limit
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # a continuation byte: back up
        cut -= 1
    return data[:cut]


def _login_bytes(user: str, password: str) -> bytes:
    """LOGIN's payload; no message here may show the password."""
    try:
        user_bytes, secret = user.encode("utf-8"), password.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("LOGIN: the user name or password is not valid UTF-8") from None
    if not 0 < len(user_bytes) < 256 or len(secret) > MAX_PASSWORD_BYTES:
        raise LocalProtocolError(
            f"LOGIN: a user name of 1-255 bytes and a password of at most "
            f"{MAX_PASSWORD_BYTES} bytes"
        )
    return bytes([len(user_bytes)]) + user_bytes + secret


def _encode_payload(event: ev.Event) -> tuple[FrameType, bytes]:
    match event:
        case ev.HelloOffered(min_version=low, max_version=high):
            return FrameType.HELLO, _HELLO.pack(HELLO_MAGIC, low, high)
        case ev.HelloAccepted(version=v, max_frame_bytes=m, read_only=ro, login_required=lr):
            return FrameType.HELLO_OK, _HELLO_OK.pack(v, m, int(ro) | int(lr) << 1)
        case ev.LoginRequested(user=u, password=pw):
            return FrameType.LOGIN, _login_bytes(u, pw)
        case ev.PutRequested(path=p, size=s, mtime_ns=t, mode=m, exclusive=x, transfer_id=b""):
            t = max(t, NO_MTIME)  # a time before 1970 cannot be carried: the server's clock
            return FrameType.PUT, _PUT.pack(s, t, int(x), m & MODE_MASK) + _path_bytes(p)
        case ev.PutRequested(
            path=p, size=s, mtime_ns=t, mode=m, exclusive=x, offset=o, transfer_id=i
        ):
            fields = (s, max(t, NO_MTIME), int(x), m & MODE_MASK, o, i, event.first_digest)
            return FrameType.PUT_AT, _PUT_AT.pack(*fields) + _path_bytes(p)
        case ev.PartialRequested(path=p, size=s, mtime_ns=t, transfer_id=i, first_digest=f):
            return FrameType.PARTIAL, _PARTIAL.pack(s, t, i, f) + _path_bytes(p)
        case ev.PartialHeld(offset=o, prefix=prefix):
            return FrameType.PARTIAL_OK, _PARTIAL_OK.pack(o, prefix)
        case ev.FileData(data=d):
            return FrameType.DATA, bytes(d)
        case ev.FileEnded(digest=d):
            return FrameType.END, d
        case ev.FileAborted():
            return FrameType.ABORT, b""
        case ev.PutCommitted(digest=d):
            return FrameType.PUT_OK, d
        case ev.GetRequested(path=p, prefix=b""):
            return FrameType.GET, _path_bytes(p)
        case ev.GetRequested(path=p, offset=o, size=s, mtime_ns=t, prefix=prefix):
            return FrameType.GET_AT, _GET_AT.pack(o, s, t, prefix) + _path_bytes(p)
        case ev.FileStarted(size=s, mtime_ns=t, mode=m, offset=None):
            return FrameType.FILE, _FILE.pack(s, t, m & MODE_MASK)
        case ev.FileStarted(size=s, mtime_ns=t, mode=m, offset=int(o)):
            return FrameType.FILE_AT, _FILE_AT.pack(s, t, m & MODE_MASK, o)
        case ev.DownloadVerified(digest=d):
            return FrameType.VERIFIED, d
        case ev.ListRequested(path=p):
            return FrameType.LIST, _path_bytes(p)
        case ev.Listed(entries=entries):
            return FrameType.ENTRIES, b"".join(encode_entry(e) for e in entries)
        case ev.ListEnded():
            return FrameType.LIST_END, b""
        case ev.StatRequested(path=p):
            return FrameType.STAT, _path_bytes(p)
        case ev.Stated(entry=e, digest=d):
            return FrameType.STAT_OK, encode_entry(e) + d
        case ev.RemoveRequested(path=p):
            return FrameType.REMOVE, _path_bytes(p)
        case ev.MkdirRequested(path=p, parents=parents):
            return FrameType.MKDIR, bytes([int(parents)]) + _path_bytes(p)
        case ev.MoveRequested(source=s, target=t, exclusive=x):
            src = _path_bytes(s)
            return FrameType.MOVE, _MOVE.pack(int(x), len(src)) + src + _path_bytes(t)
        case ev.Done():
            return FrameType.OK, b""
        case ev.TicketRequested():
            return FrameType.TICKET, b""
        case ev.TicketIssued(ticket=t, lifetime_s=life, secret=secret):
            return FrameType.TICKET_OK, _TICKET_OK.pack(t, life, secret)
        case ev.PingRequested(seq=seq, timestamp_ns=ts):
            return FrameType.PING, _ECHO.pack(seq, ts)
        case ev.Ponged(seq=seq, timestamp_ns=ts):
            return FrameType.PONG, _ECHO.pack(seq, ts)
        case Failed(code=code, message=message):
            return FrameType.ERROR, _U16.pack(code) + truncate_utf8(
                message, MAX_ERROR_MESSAGE_BYTES
            )
    raise LocalProtocolError(f"cannot encode {event!r}")


def encode(event: ev.Event) -> bytes:
    """The complete frame (header and payload) for an event."""
    frame_type, payload = _encode_payload(event)
    limit = MAX_FRAME_BYTES if frame_type == FrameType.DATA else MAX_CONTROL_BYTES
    if len(payload) > limit:
        raise LocalProtocolError(f"{frame_type.name} payload of {len(payload)} bytes is too large")
    return header(frame_type, len(payload)) + payload
