"""ftransfer: fast, verified file transfer.

Public API: ``Client`` (async: put_files, get_file, list, stat, remove, mkdir, move),
``Server`` with ``ServerConfig``, ``ClientConfig``, ``parse_remote``, and the error tree.
"""

from .client import Client, Remote, TransferResult, parse_remote
from .config import ClientConfig, ServerConfig
from .errors import ExitCode, FtransferError
from .server import Server

__version__ = "0.1.0"

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
