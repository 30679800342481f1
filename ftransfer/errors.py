"""One exception tree for ftransfer.

Theory of operation: every failure a user can meet is an ``FtransferError``. The
tree is split by whose fault it is (``LocalProtocolError``: we broke the protocol;
``RemoteProtocolError``: the peer did) and by what failed (not found, refused,
integrity, timeout, ...). Each class carries two class attributes:

- ``code``: the wire error code sent in an ERROR frame (protocol.md, "Error codes");
  0 means the error never crosses the wire.
- ``exit_code``: the CLI exit status, so the CLI maps errors to exit codes in one line.

``error_from_code`` turns a received ERROR frame back into the matching class, so a
refusal on the server surfaces as the same exception type in the client.
"""

from __future__ import annotations

from enum import IntEnum

TYPE_CHECKING = False  # typing costs every command ~6 ms to import (_records.py)
if TYPE_CHECKING:
    from typing import ClassVar


class ExitCode(IntEnum):
    """CLI exit statuses (documented in README.md)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    CONNECTION = 3
    NOT_FOUND = 4
    REFUSED = 5
    INTEGRITY = 6
    TIMEOUT = 7
    PROTOCOL = 8
    LOCAL_IO = 9
    AUTHENTICATION = 10
    HOST_KEY = 11


class FtransferError(Exception):
    """Root of every error ftransfer raises on purpose."""

    code: ClassVar[int] = 50
    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE


class UsageError(FtransferError):
    """The command line asks for something impossible (exit 2, like argparse)."""

    code = 0
    exit_code = ExitCode.USAGE


class NotSupported(FtransferError):
    """The transport cannot do this (TFTP has no listing, no remove, ...)."""

    code = 0
    exit_code = ExitCode.USAGE


class InternalError(FtransferError):
    """The server failed in a way it did not expect (a bug): code 50."""


class ProtocolError(FtransferError):
    """A protocol rule was broken; the connection cannot continue."""

    code = 1
    exit_code = ExitCode.PROTOCOL


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class UnsupportedVersion(ProtocolError):
    """No protocol version both sides speak."""

    code = 2


class ConnectionFailed(FtransferError):
    """Could not connect, or the connection broke."""

    code = 0
    exit_code = ExitCode.CONNECTION


class TlsRequired(ConnectionFailed):
    """A plaintext client (``--insecure``) reached a server that requires TLS."""

    code = 3


class InsecureServer(ConnectionFailed):
    """The server does not speak TLS and the client did not say ``--insecure``."""

    code = 0


class HostKeyError(FtransferError):
    """The server's certificate is not the one this client trusts: a changed
    fingerprint, an unknown server under ``--strict-host-keys``, a pin or a CA
    that does not match (exit 11, as ssh refuses a changed host key)."""

    code = 0
    exit_code = ExitCode.HOST_KEY


class AuthenticationFailed(FtransferError):
    """A wrong user name or password (the same error for both), or an address
    locked out after repeated failures; the server then closes."""

    code = 44
    exit_code = ExitCode.AUTHENTICATION


class LoginRequired(AuthenticationFailed):
    """The server serves only logged-in users."""

    code = 45


class Busy(ConnectionFailed):
    """The server refused the connection: too many connections."""

    code = 41


class TransferTimeout(FtransferError):
    """The peer stopped answering within the configured time."""

    code = 42
    exit_code = ExitCode.TIMEOUT


class NotFound(FtransferError):
    """The named file or directory does not exist."""

    code = 10
    exit_code = ExitCode.NOT_FOUND


class Refused(FtransferError):
    """The request is understood but not allowed."""

    code = 13
    exit_code = ExitCode.REFUSED


class PathRefused(Refused):
    """The name is unsafe or malformed (.., absolute, control characters, ...)."""

    code = 13


class Exists(Refused):
    """The target exists and the request asked not to replace it."""

    code = 11


class NotADirectory(Refused):
    """A component that must be a directory is not one."""

    code = 12


class PermissionDenied(Refused):
    """The operating system denied access."""

    code = 14


class ReadOnly(Refused):
    """The server is read-only."""

    code = 15


class NotRegularFile(Refused):
    """The name is a symlink, FIFO, socket or device: never opened."""

    code = 16


class DirectoryNotEmpty(Refused):
    """Only empty directories are removed."""

    code = 17


class IsADirectory(Refused):
    """The name is a directory where a file was expected."""

    code = 18


class InvalidMove(Refused):
    """The move cannot be done: a directory into itself, the root, a directory over a file."""

    code = 19


class NotPermitted(Refused):
    """This user may not do this (a read-only user's change, a remove without the
    delete permission)."""

    code = 22


class TooLarge(Refused):
    """The declared size exceeds the configured maximum file size."""

    code = 20


class NoSpace(Refused):
    """Not enough free space for the upload."""

    code = 21


class IntegrityError(FtransferError):
    """The received bytes do not match the sender's digest."""

    code = 30
    exit_code = ExitCode.INTEGRITY


class ResumeRefused(Refused):
    """A resume named a partial that is gone, expired, changed or another
    transfer's, or an offset it does not hold: the sender starts from 0."""

    code = 31


class StorageIOError(FtransferError):
    """The storage failed (EIO, a failed fsync, ...); nothing was committed."""

    code = 40
    exit_code = ExitCode.LOCAL_IO


class Aborted(FtransferError):
    """The sender abandoned the transfer; nothing was committed."""

    code = 43


def _wire_classes() -> dict[int, type[FtransferError]]:
    table: dict[int, type[FtransferError]] = {}
    pending: list[type[FtransferError]] = [FtransferError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        # The first class seen for a code is the most general one for it.
        if cls.code and cls.code not in table and cls not in (FtransferError,):
            table[cls.code] = cls
    table[ProtocolError.code] = RemoteProtocolError
    table[PathRefused.code] = PathRefused
    return table


ERROR_BY_CODE: dict[int, type[FtransferError]] = _wire_classes()


def error_from_code(code: int, message: str) -> FtransferError:
    """The exception for an ERROR frame received from the peer."""
    cls = ERROR_BY_CODE.get(code, InternalError)
    return cls(message)
