"""ftransfer: fast, verified file transfer over TCP, UDP and TFTP.

Public API (imported on first use, so ``ftransfer --version`` or a client command
does not pay for the server's imports, nor the reverse):

- ``Client`` and ``AsyncClient`` (``ftransfer.client``): put, get, list, stat,
  mkdir, move, remove over ``tcp://``, ``udp://`` or ``tftp://``;
  ``TransferResult``, ``Stat``, ``Entry``, ``Progress``, ``ClientConfig``;
- ``Server`` and ``ServerConfig`` (``ftransfer.server``), over a ``Store``
  (``ftransfer.storage``: a directory by default);
- the error tree: ``FtransferError`` and its subclasses in ``ftransfer.errors``,
  each with a ``code`` (on the wire) and an ``exit_code`` (the CLI's).
"""

from __future__ import annotations

__version__ = "0.2.0"
"""The one source of the version (pyproject.toml reads it from here)."""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .client import AsyncClient, Client, Entry, Progress, Stat, TransferResult
    from .config import ClientConfig, ServerConfig
    from .errors import ExitCode, FtransferError, NotSupported
    from .server import Server

_HOMES = {
    "AsyncClient": "client",
    "Client": "client",
    "Entry": "client",
    "Progress": "client",
    "Stat": "client",
    "TransferResult": "client",
    "ClientConfig": "config",
    "ServerConfig": "config",
    "ExitCode": "errors",
    "FtransferError": "errors",
    "NotSupported": "errors",
    "Server": "server",
}

__all__ = [
    "AsyncClient",
    "Client",
    "ClientConfig",
    "Entry",
    "ExitCode",
    "FtransferError",
    "NotSupported",
    "Progress",
    "Server",
    "ServerConfig",
    "Stat",
    "TransferResult",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'ftransfer' has no attribute {name!r}")
