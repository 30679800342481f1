"""Transfer logs: one record per request, as a text line, a JSON object or syslog.

Theory of operation
-------------------
Every request of every transport ends in ``operations._Request.end``, and that
is where its ``RequestRecord`` is made: when it ended (the wall clock), the peer,
the user (the one logged in, or the name a LOGIN tried), the transport, the
operation, the path (and a move's target), the bytes and seconds of a transfer
and their rate, the digest (checksum.py), the result (ok, refused, failed, aborted),
the error's wire code and its reason. Names and reasons are escaped
(``storage.names.escape``) when the record is made, so that no writer can forget
to; nothing secret is ever given to a record (a LOGIN's password, a ticket's
secret, a key or a hash never reach ``Operations``' log calls).

The record is the logging message itself (``logger.log(level, record)``: the
stdlib's documented way to log an object), so the stdlib logging machinery
carries it to every handler unchanged, and each formatter renders it its way:

- ``str(record)`` is the text line (``--log-format text``, the default), the one
  the server has always written: ``alice@127.0.0.1:5000 tcp put a/b: 1048576
  bytes in 0.120 s (8.7 MB/s), digest ...``, ``... get a/b: refused: ...``;
- ``JsonFormatter`` writes one object per line (``--log-format json``): the
  record's fields, and for the server's other messages (start-up, a protocol
  error) ``time``, ``level``, ``logger`` and ``message``;
- ``Rfc5424Formatter`` makes a syslog message (``--syslog HOST:PORT``): PRI
  from the facility and the level, VERSION 1, an RFC 3339 timestamp with its
  offset, HOSTNAME, APP-NAME ``ftransfer``, PROCID the pid, MSGID the operation,
  no structured data, and as MSG the record's JSON after rsyslog's ``@cee:``
  cookie (ASCII only, so no BOM is needed: mmjsonparse takes it as it is). Other
  messages have MSGID ``-`` and their text as MSG (after a BOM if not ASCII);
- ``LocalFormatter`` is for the local socket (``--syslog unix``): the same PRI
  and MSG behind the header syslog(3) and logger(1) write there,
  ``<30>May  1 12:00:00 ftransfer[4242]: ``. Whatever listens on /dev/log
  (journald, rsyslog's imuxsock with its default special parser) expects that
  header and mangles an RFC 5424 one (rsyslog takes the VERSION "1" for the
  tag), which is why logger(1) too keeps RFC 5424 for remote receivers.

``io/syslog.py`` sends them.

``configure`` puts these together for ``ftransfer serve``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time

from .._records import Record
from ..config import SYSLOG_FACILITIES, SYSLOG_FACILITY

APP_NAME = "ftransfer"
CEE_COOKIE = "@cee: "
"""What rsyslog's mmjsonparse looks for before a JSON message (its default)."""
SEVERITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
"""Logging levels as RFC 5424 severities (critical, error, warning, info, debug)."""
MAX_MSGID = 32
BOM = "\ufeff"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RequestRecord(Record):
    """One request as it ended (see the module docstring)."""

    time: float
    """Wall-clock seconds since the epoch when the request ended."""
    peer: str
    user: str
    """"" for anonymous."""
    transport: str
    operation: str
    path: str | None
    """Escaped; None for a request on no path (a LOGIN, a TICKET)."""
    target: str | None = None
    """A move's destination (escaped)."""
    bytes: int | None = None
    """What a transfer stored or sent (so far, if it did not end well)."""
    entries: int | None = None
    """A listing's entries."""
    seconds: float = 0.0
    digest: str | None = None
    """The digest of the file (checksum.py), in hex, when it is known."""
    result: str = "ok"
    code: int | None = None
    """The error's wire code (protocol.md section 7), None if there was none."""
    reason: str = ""
    """Why it did not end well (escaped), "" if it did."""

    @property
    def rate(self) -> float | None:
        """Bytes per second of a transfer; None if there is none to tell."""
        if self.bytes is None or self.seconds <= 0:
            return None
        return self.bytes / self.seconds

    @property
    def who(self) -> str:
        """``alice@127.0.0.1:5000``, or the address alone."""
        return f"{self.user}@{self.peer}" if self.user else self.peer

    def __str__(self) -> str:
        what = self.operation if self.path is None else f"{self.operation} {self.path}"
        if self.target is not None:
            what += f" -> {self.target}"
        return f"{self.who} {self.transport} {what}: {self._outcome()}"

    def _outcome(self) -> str:
        if self.result != "ok":
            return f"{self.result}: {self.reason}"
        if self.entries is not None:
            return f"{self.entries} entries"
        if self.bytes is None:
            return self.reason or "ok"
        text = f"{self.bytes} bytes in {self.seconds:.3f} s"
        rate = self.rate
        if rate is not None:
            text += f" ({rate / 1e6:.1f} MB/s)"
        return text + (f", digest {self.digest}" if self.digest else "")

    def fields(self) -> dict[str, object]:
        """The record as JSON would have it (the time in RFC 3339, seconds to the
        microsecond, the rate in whole bytes per second)."""
        rate = self.rate
        return {
            "time": rfc3339(self.time),
            "peer": self.peer,
            "user": self.user,
            "transport": self.transport,
            "operation": self.operation,
            "path": self.path,
            "target": self.target,
            "bytes": self.bytes,
            "entries": self.entries,
            "seconds": round(self.seconds, 6),
            "rate": None if rate is None else round(rate),
            "digest": self.digest,
            "result": self.result,
            "code": self.code,
            "reason": self.reason,
        }


def rfc3339(seconds: float) -> str:
    """``2024-05-01T12:00:00.123456+02:00``: local time, to the microsecond, with
    its offset (RFC 3339, and RFC 5424's TIMESTAMP)."""
    moment = datetime.datetime.fromtimestamp(seconds).astimezone()
    return moment.isoformat(timespec="microseconds")


def record_of(log_record: logging.LogRecord) -> RequestRecord | None:
    """The request record a log message carries, if it is one."""
    message = log_record.msg
    return message if isinstance(message, RequestRecord) else None


class JsonFormatter(logging.Formatter):
    """One JSON object per message (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        request = record_of(record)
        level = record.levelname.lower()
        if request is not None:
            fields = request.fields()
            fields = {"time": fields.pop("time"), "level": level, **fields}
            return json.dumps(fields, ensure_ascii=False)
        fields = {"time": rfc3339(record.created), "level": level, "logger": record.name}
        fields["message"] = record.getMessage()
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=False)


class _SyslogFormatter(logging.Formatter):
    """What both syslog formats share: PRI, the time, MSGID and MSG."""

    def __init__(self, *, facility: int, pid: int | None = None) -> None:
        super().__init__()
        self.facility = facility
        self.procid = str(os.getpid() if pid is None else pid)

    def pri(self, record: logging.LogRecord) -> int:
        severity = SEVERITIES.get(record.levelno, _nearest_severity(record.levelno))
        return self.facility * 8 + severity

    @staticmethod
    def parts(record: logging.LogRecord) -> tuple[float, str, str]:
        """When (a record's own time), MSGID (its operation, or ``-``) and MSG
        (a record as ``@cee:`` and ASCII JSON; other messages as their text)."""
        request = record_of(record)
        if request is not None:
            message = CEE_COOKIE + json.dumps(request.fields(), ensure_ascii=True)
            return request.time, printable_ascii(request.operation, MAX_MSGID), message
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text += f": {type(error).__name__}: {error}"
        return record.created, "-", text.replace("\n", " ")


class Rfc5424Formatter(_SyslogFormatter):
    """A log message as one RFC 5424 syslog message (see the module docstring)."""

    def __init__(self, *, facility: int, hostname: str, pid: int | None = None) -> None:
        super().__init__(facility=facility, pid=pid)
        self.hostname = printable_ascii(hostname, 255)

    def format(self, record: logging.LogRecord) -> str:
        moment, msgid, message = self.parts(record)
        if not message.isascii():
            message = BOM + message  # MSG-UTF8 (RFC 5424 section 6.4)
        return (
            f"<{self.pri(record)}>1 {rfc3339(moment)} {self.hostname}"
            f" {APP_NAME} {self.procid} {msgid} - {message}"
        )


class LocalFormatter(_SyslogFormatter):
    """A log message as syslog(3) writes it to ``/dev/log`` (see the module
    docstring): ``<30>May  1 12:00:00 ftransfer[4242]: MSG``."""

    def format(self, record: logging.LogRecord) -> str:
        moment, _msgid, message = self.parts(record)
        return f"<{self.pri(record)}>{rfc3164(moment)} {APP_NAME}[{self.procid}]: {message}"


def rfc3164(seconds: float) -> str:
    """``May  1 12:00:00``: local time, the month in English whatever the locale,
    the day padded with a space (syslog(3)'s ``%h %e %T``)."""
    moment = time.localtime(seconds)
    month = MONTHS[moment.tm_mon - 1]
    return (
        f"{month} {moment.tm_mday:2d} {moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d}"
    )


def _nearest_severity(levelno: int) -> int:
    """The severity of the nearest standard level at or below ``levelno``."""
    below = [level for level in SEVERITIES if level <= levelno]
    return SEVERITIES[max(below)] if below else SEVERITIES[logging.DEBUG]


def printable_ascii(text: str, limit: int) -> str:
    """A header field: printable ASCII without spaces, at most ``limit`` long,
    or ``-`` (RFC 5424's NILVALUE) if nothing is left."""
    kept = "".join(char for char in text if "!" <= char <= "~")[:limit]
    return kept or "-"


def configure(
    *,
    level: str,
    log_format: str,
    syslog: str | None = None,
    facility: str = SYSLOG_FACILITY,
) -> None:
    """The server's logging (``ftransfer serve``): stderr in ``log_format``
    (text or json) and, with ``syslog`` (``HOST:PORT``, ``unix`` or
    ``unix:PATH``), the same messages as RFC 5424 to that receiver."""
    from ..io import syslog as sender

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handlers: list[logging.Handler] = [stderr]
    if syslog is not None:
        target = sender.parse_target(syslog)
        code = SYSLOG_FACILITIES[facility]
        handler = sender.SyslogHandler(target)
        handler.setFormatter(
            LocalFormatter(facility=code)
            if target.path is not None
            else Rfc5424Formatter(facility=code, hostname=sender.hostname())
        )
        handlers.append(handler)
    logging.basicConfig(level=level.upper(), handlers=handlers, force=True)
