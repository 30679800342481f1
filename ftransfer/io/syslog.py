"""Sending log messages to a syslog receiver: one datagram per message.

Theory of operation
-------------------
``SyslogHandler`` is a ``logging.Handler`` that sends what its formatter makes
(``server/logs.Rfc5424Formatter``: this module knows no message format) as one
UTF-8 datagram, either over UDP to ``HOST:PORT`` (RFC 5426: one message per
datagram, no framing) or to a local datagram socket (``unix``: ``/dev/log``, or
``unix:PATH``), where rsyslog's imuxsock and journald listen.

Logging must never stop a transfer, so the sockets never block and no error is
raised: a receiver that is not there (ENOENT, ECONNREFUSED: rsyslog restarting)
or a full queue (EAGAIN, ENOBUFS) drops the message, the first drop is told once
on stderr and the recovery is told too. A local socket is connected again at the
next message after it failed, so a restarted rsyslog is found again. A UDP
receiver is resolved once, at start-up, where a wrong name is an error to
report, and is sent to with ``sendto`` (no ICMP error comes back to a later send).
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable

from .._records import Record
from ..config import SYSLOG_PORT
from ..errors import UsageError

DEV_LOG = "/dev/log"


class Target(Record):
    """Where messages go: a UDP address, or a local socket's path."""

    text: str
    """As the operator wrote it (for messages)."""
    address: tuple[str, int] | None = None
    family: int = socket.AF_INET
    path: str | None = None


def parse_target(text: str) -> Target:
    """``HOST[:PORT]`` (IPv6 in brackets), ``unix`` or ``unix:PATH``; a name
    that does not resolve is a UsageError."""
    if text == "unix" or text.startswith("unix:"):
        return Target(text=text, path=text.partition(":")[2] or DEV_LOG)
    host, port = _split(text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UsageError(f"--syslog {text}: cannot resolve {host!r}: {exc.strerror}") from None
    family, _kind, _proto, _name, address = infos[0]
    return Target(text=text, address=(str(address[0]), int(address[1])), family=family)


def _split(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else SYSLOG_PORT
    except ValueError:
        raise UsageError(f"--syslog {text}: the port must be a number") from None
    if not host or not 0 < port < 65536:
        raise UsageError(f"--syslog {text}: expected HOST:PORT, unix or unix:PATH")
    return host, port


def hostname() -> str:
    """This machine's name, for the messages' HOSTNAME."""
    return socket.gethostname()


class SyslogHandler(logging.Handler):
    """Log messages as datagrams to a syslog receiver (see the module docstring)."""

    def __init__(self, target: Target, *, report: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.target = target
        self.dropped = 0
        self._report = report or _to_stderr
        self._sock: socket.socket | None = None
        self._failing = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.format(record).encode("utf-8", "backslashreplace")
        except Exception:  # a formatting bug: logging's own report
            self.handleError(record)
            return
        try:
            self._send(data)
        except OSError as exc:
            self._dropped(exc)
        else:
            self._recovered()

    def _send(self, data: bytes) -> None:
        sock = self._sock or self._open()
        try:
            if self.target.path is not None:
                sock.send(data)
            else:
                assert self.target.address is not None
                sock.sendto(data, self.target.address)
        except OSError:
            if self.target.path is not None:  # connect again next time
                self._close_socket()
            raise

    def _open(self) -> socket.socket:
        path = self.target.path
        family = socket.AF_UNIX if path is not None else self.target.family
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        if path is not None:
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
        self._sock = sock
        return sock

    def _dropped(self, exc: OSError) -> None:
        self.dropped += 1
        if not self._failing:
            self._failing = True
            reason = exc.strerror or str(exc)
            self._report(f"syslog {self.target.text}: {reason}; dropping messages until it works")

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self._report(f"syslog {self.target.text}: sending again ({self.dropped} dropped)")

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self.acquire()
        try:
            self._close_socket()
        finally:
            self.release()
        super().close()


def _to_stderr(text: str) -> None:
    print(f"ftransfer: {text}", file=sys.stderr, flush=True)
