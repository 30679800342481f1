"""A strict RFC 5424 parser for the tests: every rule of section 6's ABNF, or
ValueError with the rule that failed.

    SYSLOG-MSG = HEADER SP STRUCTURED-DATA [SP MSG]
    HEADER     = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID

PRI is 0..191 without leading zeros, VERSION 1, TIMESTAMP RFC 3339 with an upper
case T, at most 6 digits of fraction and an offset (Z or +hh:mm); the four
header fields are printable US-ASCII (33..126) of bounded length or "-";
STRUCTURED-DATA is "-" or SD-ELEMENTs whose PARAM-VALUEs escape only '"', '\\'
and ']'; MSG is UTF-8 after a BOM, or any octets without one.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

BOM = b"\xef\xbb\xbf"
NILVALUE = "-"
TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})"
)
PRI = re.compile(r"<(0|[1-9]\d{0,2})>")
LIMITS = {"HOSTNAME": 255, "APP-NAME": 48, "PROCID": 128, "MSGID": 32}


@dataclass
class Message:
    facility: int
    severity: int
    timestamp: datetime.datetime | None
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    msg: bytes = b""
    """MSG as sent, without the BOM."""
    utf8: bool = False
    """MSG started with a BOM (and so is UTF-8)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take_until_space(self, rule: str) -> bytes:
        end = self.data.find(b" ", self.at)
        if end < 0:
            raise ValueError(f"{rule}: no SP after it")
        part, self.at = self.data[self.at : end], end + 1
        if not part:
            raise ValueError(f"{rule}: empty")
        return part

    def rest(self) -> bytes:
        return self.data[self.at :]


def parse(data: bytes) -> Message:
    """Parse one syslog message, strictly."""
    reader = _Reader(data)
    head = reader.take_until_space("PRI VERSION")
    match = PRI.match(head.decode("ascii", "replace"))
    if match is None:
        raise ValueError(f"PRI: {head!r}")
    pri = int(match.group(1))
    if pri > 191:
        raise ValueError(f"PRI: {pri} is over 191")
    if head[match.end() :] != b"1":
        raise ValueError(f"VERSION: {head[match.end() :]!r}, not 1")
    timestamp = _timestamp(reader.take_until_space("TIMESTAMP"))
    host, app, procid, msgid = (_header_field(reader.take_until_space(r), r) for r in LIMITS)
    sd, rest = _structured_data(reader.rest())
    message = Message(pri >> 3, pri & 7, timestamp, host, app, procid, msgid, structured_data=sd)
    if rest:
        if not rest.startswith(b" "):
            raise ValueError("MSG: no SP before it")
        _msg(message, rest[1:])
    return message


def _timestamp(raw: bytes) -> datetime.datetime | None:
    text = raw.decode("ascii")
    if text == NILVALUE:
        return None
    if TIMESTAMP.fullmatch(text) is None:
        raise ValueError(f"TIMESTAMP: {text!r}")
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))  # checks the values


def _header_field(raw: bytes, rule: str) -> str:
    if len(raw) > LIMITS[rule] or any(not 33 <= octet <= 126 for octet in raw):
        raise ValueError(f"{rule}: {raw!r}")
    return raw.decode("ascii")


def _structured_data(data: bytes) -> tuple[list[tuple[str, list[tuple[str, str]]]], bytes]:
    if data.startswith(b"-"):
        return [], data[1:]
    elements: list[tuple[str, list[tuple[str, str]]]] = []
    while data.startswith(b"["):
        element, data = _sd_element(data[1:])
        elements.append(element)
    if not elements:
        raise ValueError(f"STRUCTURED-DATA: {data[:20]!r}")
    return elements, data


def _sd_name(data: bytes, rule: str) -> tuple[str, bytes]:
    end = 0
    while end < len(data) and 33 <= data[end] <= 126 and data[end] not in b'= ]"':
        end += 1
    if not 1 <= end <= 32:
        raise ValueError(f"{rule}: {data[:40]!r}")
    return data[:end].decode("ascii"), data[end:]


def _sd_element(data: bytes) -> tuple[tuple[str, list[tuple[str, str]]], bytes]:
    sd_id, data = _sd_name(data, "SD-ID")
    params: list[tuple[str, str]] = []
    while data.startswith(b" "):
        name, data = _sd_name(data[1:], "PARAM-NAME")
        if not data.startswith(b'="'):
            raise ValueError(f"SD-PARAM: {data[:20]!r}")
        value, data = _param_value(data[2:])
        params.append((name, value))
    if not data.startswith(b"]"):
        raise ValueError(f"SD-ELEMENT: {data[:20]!r}")
    return (sd_id, params), data[1:]


def _param_value(data: bytes) -> tuple[str, bytes]:
    out, at = bytearray(), 0
    while at < len(data):
        octet = data[at]
        if octet == 0x5C and at + 1 < len(data) and data[at + 1] in b'"\\]':
            out.append(data[at + 1])
            at += 2
        elif octet == 0x22:
            return out.decode("utf-8"), data[at + 1 :]
        elif octet == 0x5D:
            raise ValueError("PARAM-VALUE: an unescaped ]")
        else:
            out.append(octet)
            at += 1
    raise ValueError("PARAM-VALUE: no closing quote")


def _msg(message: Message, raw: bytes) -> None:
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
        raw.decode("utf-8")  # strictly: MSG-UTF8 must be valid UTF-8
        message.utf8 = True
    message.msg = raw
