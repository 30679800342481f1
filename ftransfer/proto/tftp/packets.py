"""TFTP packet codec and option negotiation (RFC 1350, 2347, 2348, 2349, 7440).

Theory of operation
-------------------
Six packet kinds, each a big-endian u16 opcode and a body:

    RRQ/WRQ  filename NUL mode NUL [option NUL value NUL]...
    DATA     block u16, 0..blksize bytes (a short block ends the transfer)
    ACK      block u16
    ERROR    code u16, message NUL
    OACK     [option NUL value NUL]...

``parse_untrusted`` turns peer bytes into one of the frozen packet classes below
and may raise only ``TftpPacketError``. It is deliberately lenient where real
clients are sloppy (option names in any case, a missing final NUL on an ERROR
message, trailing empty strings after the options) and strict where sloppiness is
dangerous (filenames must be UTF-8 with no NUL, options must be pairs).

``negotiate`` is the server's side of option negotiation: it keeps the options it
understands, clamps them to the operator's limits and answers with the values it
will use; unknown options are ignored (RFC 2347). ``check_oack`` is the client's
side: an OACK may only lower what was asked, and may only name what was asked.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from enum import IntEnum

from ..._records import Record, factory
from ...config import TFTP_MAX_BLKSIZE, TFTP_MAX_WINDOWSIZE, TFTP_MIN_BLKSIZE
from ...errors import RemoteProtocolError

DEFAULT_BLKSIZE = 512
"""RFC 1350's block size, used whenever blksize is not negotiated."""
MIN_BLKSIZE, MAX_BLKSIZE = TFTP_MIN_BLKSIZE, TFTP_MAX_BLKSIZE
"""RFC 2348 range."""
MAX_WINDOWSIZE = TFTP_MAX_WINDOWSIZE
"""RFC 7440 range upper bound (lower bound 1)."""
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1, 255
"""RFC 2349 range of the timeout option, in whole seconds."""
MAX_MESSAGE_BYTES = 255
"""ERROR messages we send are cut to this (they should fit any block size)."""

HEADER = struct.Struct(">HH")
"""opcode + block (DATA, ACK) or opcode + code (ERROR)."""
OPCODE = struct.Struct(">H")


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    """RFC 1350 error codes, plus 8 from RFC 2347."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class TftpPacketError(RemoteProtocolError):
    """Bytes that are not a well-formed TFTP packet."""


class Request(Record):
    """RRQ (``write`` False) or WRQ."""

    write: bool
    filename: str
    mode: str
    """Lower-cased transfer mode: ``octet`` or ``netascii``."""
    options: dict[str, str] = factory(dict)
    """Lower-cased option names to their values, first occurrence wins."""


class Data(Record):
    block: int
    payload: bytes


class Ack(Record):
    block: int


class Error(Record):
    code: int
    message: str


class OptionAck(Record):
    options: dict[str, str]


Packet = Request | Data | Ack | Error | OptionAck


def _strings(body: bytes) -> list[bytes]:
    """NUL-terminated fields; a final field without its NUL is an error."""
    if not body.endswith(b"\0"):
        raise TftpPacketError("a string field is not NUL-terminated")
    return body[:-1].split(b"\0")


def _options(fields: list[bytes]) -> dict[str, str]:
    while fields and fields[-1] == b"":  # some clients pad with extra NULs
        fields = fields[:-1]
    if len(fields) % 2:
        raise TftpPacketError("an option has no value")
    options: dict[str, str] = {}
    for name, value in zip(fields[::2], fields[1::2], strict=True):
        try:
            key, text = name.decode("ascii").lower(), value.decode("ascii")
        except UnicodeDecodeError:
            raise TftpPacketError("option names and values must be ASCII") from None
        options.setdefault(key, text)
    return options


def _request(write: bool, body: bytes) -> Request:
    fields = _strings(body)
    if len(fields) < 2:
        raise TftpPacketError("a request needs a filename and a mode")
    try:
        filename = fields[0].decode("utf-8")
        mode = fields[1].decode("ascii").lower()
    except UnicodeDecodeError:
        raise TftpPacketError("the filename is not UTF-8 or the mode not ASCII") from None
    return Request(write=write, filename=filename, mode=mode, options=_options(fields[2:]))


def parse_untrusted(datagram: bytes | memoryview) -> Packet:
    """Decode one datagram; raises only ``TftpPacketError``."""
    data = bytes(datagram)
    if len(data) < 2:
        raise TftpPacketError(f"a {len(data)}-byte datagram has no opcode")
    (opcode,) = OPCODE.unpack_from(data)
    body = data[2:]
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _request(opcode == Opcode.WRQ, body)
    if opcode == Opcode.OACK:
        return OptionAck(options=_options(_strings(body)) if body else {})
    if len(body) < 2:
        raise TftpPacketError(f"opcode {opcode} needs a 2-byte block or code")
    (number,) = OPCODE.unpack_from(body)
    if opcode == Opcode.DATA:
        return Data(block=number, payload=body[2:])
    if opcode == Opcode.ACK:
        return Ack(block=number)
    if opcode == Opcode.ERROR:
        text = body[2:].split(b"\0", 1)[0]
        return Error(code=number, message=text.decode("utf-8", "replace"))
    raise TftpPacketError(f"unknown opcode {opcode}")


def encode_request(request: Request) -> bytes:
    fields = [request.filename.encode(), request.mode.encode()]
    for name, value in request.options.items():
        fields += [name.encode("ascii"), value.encode("ascii")]
    opcode = Opcode.WRQ if request.write else Opcode.RRQ
    return OPCODE.pack(opcode) + b"".join(f + b"\0" for f in fields)


def encode_data(block: int, payload: bytes | memoryview) -> bytes:
    return HEADER.pack(Opcode.DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    return HEADER.pack(Opcode.ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    text = message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES].replace(b"\0", b" ")
    return HEADER.pack(Opcode.ERROR, code) + text + b"\0"


def encode_oack(options: Mapping[str, str]) -> bytes:
    fields = (f"{name}\0{value}\0" for name, value in options.items())
    body = "".join(fields).encode("ascii")
    return OPCODE.pack(Opcode.OACK) + body


class Params(Record):
    """What a transfer runs with once options are settled."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout_s: float | None = None
    """The peer's requested retransmission timeout (RFC 2349), if any."""
    tsize: int | None = None
    """The transfer size, when known (RFC 2349)."""


class Limits(Record):
    """The operator's caps on what a client may ask for."""

    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64


class OptionError(Exception):
    """An option value the server refuses outright (answered with ERROR 8)."""


MAX_OPTION_DIGITS = 20
"""Option values are decimal numbers of at most this many digits (2^64 has 20):
longer ones are ignored, as an unknown option is, except a WRQ's tsize (below)."""
TSIZE_BEYOND_ANY = 2**64
"""A WRQ's tsize of more digits than MAX_OPTION_DIGITS stands for this: larger than
any file, so the size limit refuses it before any data (ignoring it would start
an upload that could only fail at the limit)."""


def _int(value: str) -> int | None:
    return (
        int(value)
        if value.isascii() and value.isdigit() and len(value) <= MAX_OPTION_DIGITS
        else None
    )


def negotiate(
    options: Mapping[str, str], limits: Limits, *, write: bool, file_size: int | None
) -> tuple[Params, dict[str, str]]:
    """The server's answer to a request's options: (params, OACK options).

    ``file_size`` is the size a read will send, or None when it cannot be told in
    advance (netascii); a write takes its size from the client's tsize. Values out
    of range are ignored, as tftp-hpa does; values above the operator's caps are
    lowered, which RFC 2348 and RFC 7440 allow.
    """
    accepted: dict[str, str] = {}
    blksize, window, timeout, size = DEFAULT_BLKSIZE, 1, None, None
    value = _int(options.get("blksize", ""))
    if value is not None and value >= MIN_BLKSIZE:
        blksize = min(value, MAX_BLKSIZE, limits.max_blksize)
        accepted["blksize"] = str(blksize)
    value = _int(options.get("windowsize", ""))
    if value is not None and 1 <= value <= MAX_WINDOWSIZE:
        window = min(value, limits.max_windowsize)
        accepted["windowsize"] = str(window)
    value = _int(options.get("timeout", ""))
    if value is not None and MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
        timeout = float(value)
        accepted["timeout"] = str(value)
    text = options.get("tsize", "")
    value = _int(text)
    if value is None and write and text.isascii() and text.isdigit():
        value = TSIZE_BEYOND_ANY
    if value is not None:
        size = value if write else file_size
        if size is not None:
            accepted["tsize"] = str(size)
    return Params(blksize=blksize, windowsize=window, timeout_s=timeout, tsize=size), accepted


def check_oack(asked: Mapping[str, str], answer: Mapping[str, str]) -> Params:
    """The client's check of an OACK; raises ``OptionError`` if it breaks the rules."""
    for name in answer:
        if name not in asked:
            raise OptionError(f"the server acknowledged option {name!r}, which was not asked")
    blksize, window, timeout, size = DEFAULT_BLKSIZE, 1, None, None
    for name, text in answer.items():
        value = _int(text)
        if value is None:
            raise OptionError(f"option {name}={text!r} is not a number")
        if name == "blksize":
            if not MIN_BLKSIZE <= value <= int(asked[name]):
                raise OptionError(f"blksize {value} is outside 8..{asked[name]}")
            blksize = value
        elif name == "windowsize":
            if not 1 <= value <= int(asked[name]):
                raise OptionError(f"windowsize {value} is outside 1..{asked[name]}")
            window = value
        elif name == "timeout":
            if not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
                raise OptionError(f"timeout {value} is outside 1..255")
            timeout = float(value)
        elif name == "tsize":
            size = value
    return Params(blksize=blksize, windowsize=window, timeout_s=timeout, tsize=size)
