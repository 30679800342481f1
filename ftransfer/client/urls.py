"""Where a client connects: ``tcp://``, ``udp://`` and ``tftp://`` URLs, and REMOTE.

Theory of operation
-------------------
One parser for every way a user names a server:

- ``tcp://HOST[:PORT]``, ``udp://HOST[:PORT]``, ``tftp://HOST[:PORT]``, each with an
  optional ``/PATH`` (the CLI's REMOTE); a bare ``HOST[:PORT][/PATH]`` is TCP, and
  so is scp's ``HOST:/PATH`` (a colon followed by a slash);
- IPv6 addresses go in brackets when a port follows (``[2001:db8::1]:9021/dir``);
  a bare address without a port is understood too (``::1``, ``::1/dir``): an IPv6
  literal cannot be told from one with a port appended, so a port needs brackets;
- the default port is 9021 for tcp and udp, 69 for tftp;
- a user to log in as goes before the host, scp style: ``alice@host:9021/dir``,
  ``tcp://alice@[::1]/dir`` (only before the first ``/``: a path may hold ``@``).

A malformed one raises ValueError with the reason; ``format_address`` prints a
host and port back, IPv6 in brackets.
"""

from __future__ import annotations

import _socket  # not socket: see io/tcp_sockets.py (start-up)

from .._records import Record
from ..config import DEFAULT_PORT, TFTP_PORT

SCHEMES = {"tcp": DEFAULT_PORT, "udp": DEFAULT_PORT, "tftp": TFTP_PORT, "auto": DEFAULT_PORT}
"""``auto://``: TCP or UDP, whichever the path suits (client/auto.py)."""


class Url(Record):
    """A parsed server address, with the path that followed it (if any)."""

    scheme: str
    host: str
    port: int
    path: str = ""
    user: str = ""
    """The user to log in as ("" : anonymous)."""

    @property
    def address(self) -> str:
        """``HOST:PORT`` (IPv6 in brackets)."""
        return format_address(self.host, self.port)

    def __str__(self) -> str:
        tail = f"/{self.path}" if self.path else ""
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{user}{self.address}{tail}"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ipv6(text: str) -> bool:
    try:
        _socket.inet_pton(_socket.AF_INET6, text.split("%", 1)[0])
    except (OSError, ValueError):
        return False
    return True


def _split_host(text: str) -> tuple[str, str]:
    """(host, the rest: ':PORT...' or '/PATH' or '')."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unterminated '[' in IPv6 address")
        return text[1:end], text[end + 1 :]
    head, slash, tail = text.partition("/")
    if head.count(":") >= 2 and _is_ipv6(head):
        return head, slash + tail
    cut = min((i for i in (text.find(":"), text.find("/")) if i >= 0), default=len(text))
    return text[:cut], text[cut:]


def parse_url(text: str, *, default_scheme: str = "tcp", allow_port_zero: bool = False) -> Url:
    """Parse a URL or a REMOTE (see the module docstring); ValueError if malformed."""
    scheme = default_scheme
    given, sep, rest = text.partition("://")
    if sep:
        if given.lower() not in SCHEMES:
            raise ValueError(f"{text!r}: unknown scheme {given!r} (tcp, udp or tftp)")
        scheme, text = given.lower(), rest
    user, text = _split_user(text)
    host, rest = _split_host(text)
    if not host:
        raise ValueError(f"{text!r}: no host")
    port = SCHEMES[scheme]
    if rest.startswith(":"):
        digits, slash, tail = rest[1:].partition("/")
        rest = slash + tail
        if digits:
            lowest = 0 if allow_port_zero else 1
            if not digits.isdigit() or not lowest <= int(digits) < 65536:
                raise ValueError(f"{text!r}: port must be a number from {lowest} to 65535")
            port = int(digits)
    if rest and not rest.startswith("/"):
        raise ValueError(f"{text!r}: expected '/' before the path")
    return Url(scheme=scheme, host=host, port=port, path=rest[1:], user=user)


def explicit_port(text: str) -> bool:
    """Whether a REMOTE names its port (else the scheme's default applies)."""
    _given, sep, rest = text.partition("://")
    _user, rest = _split_user(rest if sep else text)
    try:
        _host, after = _split_host(rest)
    except ValueError:
        return False
    return after.startswith(":") and after[1:2].isdigit()


def _split_user(text: str) -> tuple[str, str]:
    """(the user before ``@``, the rest); the user "" when there is none."""
    authority = text.split("/", 1)[0]
    if "@" not in authority:
        return "", text
    user, _at, rest = text.partition("@")
    if not user:
        raise ValueError(f"{text!r}: no user name before '@'")
    return user, rest
