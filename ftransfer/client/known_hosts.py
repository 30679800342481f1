"""The client's trust store: server fingerprints by address, as ssh's known_hosts.

Theory of operation
-------------------
A server's certificate is self-signed (io/tls.py), so a client cannot ask a CA
whether it is talking to the right server. It does what ssh does instead: trust
on first use. The first connection to an address records the fingerprint the
server presented; later connections must present the same one. A changed
fingerprint is refused loudly, never replaced silently: either the server was
reinstalled (the user removes the line and connects again) or someone is in the
middle. The file, one server a line::

    # comments and blank lines are ignored
    files.example:9021 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU
    [::1]:9021 SHA256:...

A line that is not of this shape is skipped and remembered (``malformed``), so a
hand edit gone wrong costs one entry, not every connection. Additions are one
``os.write`` of a whole line on an ``O_APPEND`` descriptor: clients connecting at
the same time never interleave half lines. The file is read at each lookup, so
lines removed or added by others are seen.

``verify_server`` is the policy: a ``--fingerprint`` pin, when given, decides alone
(the file is neither read nor written); otherwise known passes, unknown is
recorded with a notice (or refused under ``--strict-host-keys``), changed is
refused with the recorded line's number and how to remove it.

Only the standard library's lightest modules are used: this runs in every TLS
command's start-up, and the client layer imports no socket (docs/architecture.md).
"""

from __future__ import annotations

import os
import re

from .._records import Record
from ..errors import HostKeyError

TYPE_CHECKING = False  # typing costs every command ~6 ms to import (_records.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

_ADDRESS = re.compile(r"(?:\[[0-9A-Fa-f:.%\w-]+\]|[^\s:\[\]]+):(\d{1,5})")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


class Trust(Record):
    """What the store says of a fingerprint for an address: ``known``, ``unknown``,
    or ``changed`` (then the fingerprint recorded for it, and on which line)."""

    status: Literal["known", "unknown", "changed"]
    recorded: str | None = None
    line: int | None = None


def format_address(host: str, port: int) -> str:
    """``host:port`` as the file writes it (IPv6 in brackets: ``[::1]:9021``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _normal(address: str) -> str:
    """The form addresses are compared in: host names are case-insensitive."""
    return address.lower()


def _well_formed(address: str, fingerprint: str) -> bool:
    match = _ADDRESS.fullmatch(address)
    return (
        match is not None
        and 0 < int(match.group(1)) < 65536
        and _FINGERPRINT.fullmatch(fingerprint) is not None
    )


class KnownHosts:
    """The known_hosts file at ``path`` (which need not exist yet)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.malformed: list[int] = []
        """Line numbers skipped by the last read, for a warning if wanted."""

    def _entries(self) -> list[tuple[int, str, str]]:
        """(line number, address, fingerprint) of each well-formed line."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                lines = file.read().splitlines()
        except FileNotFoundError:
            lines = []
        entries: list[tuple[int, str, str]] = []
        self.malformed = []
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.split()
            if len(fields) == 2 and _well_formed(*fields):
                entries.append((number, _normal(fields[0]), fields[1]))
            else:
                self.malformed.append(number)
        return entries

    def lookup(self, address: str) -> list[tuple[int, str]]:
        """(line number, fingerprint) of every line recorded for ``address``."""
        wanted = _normal(address)
        return [(number, fp) for number, addr, fp in self._entries() if addr == wanted]

    def check(self, address: str, fingerprint: str) -> Trust:
        """Whether ``fingerprint`` is the one recorded for ``address``."""
        recorded = self.lookup(address)
        if not recorded:
            return Trust(status="unknown")
        if any(fp == fingerprint for _number, fp in recorded):
            return Trust(status="known")
        number, fp = recorded[0]
        return Trust(status="changed", recorded=fp, line=number)

    def add(self, address: str, fingerprint: str) -> None:
        """Record ``fingerprint`` for ``address`` (once): one whole line appended
        in one write, the directory (0700) and file (0600) made if missing."""
        if not _well_formed(address, fingerprint):
            raise ValueError(f"not an address and a fingerprint: {address!r} {fingerprint!r}")
        if any(fp == fingerprint for _n, fp in self.lookup(address)):
            return
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            line = f"{address} {fingerprint}\n".encode()
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a hand edit left the last line open
            os.write(fd, line)
        finally:
            os.close(fd)


def verify_server(
    known_hosts_path: str,
    address: str,
    fingerprint: str,
    *,
    strict: bool,
    pinned: str | None,
    notice: Callable[[str], None],
) -> None:
    """Accept the server at ``address`` presenting ``fingerprint``, or raise
    HostKeyError (see the module docstring for the policy)."""
    if pinned is not None:
        _check_pin(address, fingerprint, pinned)
        return
    store = KnownHosts(known_hosts_path)
    trust = store.check(address, fingerprint)
    if trust.status == "known":
        return
    if trust.status == "changed":
        assert trust.recorded is not None and trust.line is not None
        raise HostKeyError(
            _changed_message(known_hosts_path, address, fingerprint, trust.recorded, trust.line)
        )
    if strict:
        raise HostKeyError(
            f"{address} (fingerprint {fingerprint}) is not in {known_hosts_path}"
            " (--strict-host-keys); check its fingerprint and connect once without"
            f" --strict-host-keys, or pass --fingerprint {fingerprint}"
        )
    store.add(address, fingerprint)
    notice(
        f"ftransfer: {address}: new server, fingerprint {fingerprint},"
        f" recorded in {known_hosts_path}"
    )


def _check_pin(address: str, fingerprint: str, pinned: str) -> None:
    """A ``--fingerprint`` given with or without ``SHA256:`` and base64 padding."""
    wanted = pinned.strip().rstrip("=")
    if not wanted.startswith("SHA256:"):
        wanted = "SHA256:" + wanted
    if wanted != fingerprint:
        raise HostKeyError(
            f"the fingerprint of {address} is not the pinned one:\n"
            f"  pinned (--fingerprint): {wanted}\n"
            f"  presented:              {fingerprint}"
        )


def _changed_message(path: str, address: str, presented: str, recorded: str, line: int) -> str:
    from shlex import quote  # only on this path: shlex costs start-up

    return (
        f"WARNING: the fingerprint of {address} has changed.\n"
        "Someone could be intercepting the connection (a man in the middle),"
        " or the server has a new key.\n"
        f"  recorded:  {recorded} ({path} line {line})\n"
        f"  presented: {presented}\n"
        "The connection was refused. If the server was reinstalled, remove line"
        f" {line} of {path} (`sed -i '{line}d' {quote(path)}`) and connect again."
    )
