"""ftransfer: fast, verified file transfer.

Public API: ``Client`` (async: put_files, get_file, list_dir, stat, remove, mkdir,
move), ``Server`` with ``ServerConfig``, ``ClientConfig``, ``parse_remote``, and the
error tree (``FtransferError`` and its subclasses in ``ftransfer.errors``).

Attributes are imported on first use, so ``ftransfer --version`` or a client command
does not pay for the server's imports (and the reverse).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client, Remote, TransferResult, parse_remote
    from .config import ClientConfig, ServerConfig
    from .errors import ExitCode, FtransferError
    from .server import Server

__version__ = "0.1.0"

_HOMES = {
    "Client": "client",
    "Remote": "client",
    "TransferResult": "client",
    "parse_remote": "client",
    "ClientConfig": "config",
    "ServerConfig": "config",
    "ExitCode": "errors",
    "FtransferError": "errors",
    "Server": "server",
}

__all__ = [
    "Client",
    "ClientConfig",
    "ExitCode",
    "FtransferError",
    "Remote",
    "Server",
    "ServerConfig",
    "TransferResult",
    "__version__",
    "parse_remote",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'ftransfer' has no attribute {name!r}")
