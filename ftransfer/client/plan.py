"""Where things go: the remote names of uploads and the local path of a download.

Theory of operation
-------------------
scp's rules, which users already know:

- ``put`` of several files, or to an empty path, or to a path ending in ``/``, or
  to an existing remote directory, puts each file into that directory under its
  own name; otherwise the one file gets the remote path as its name. Only the last
  case needs to ask the server (one STAT), and only where the transport can.
- ``get`` into nothing writes the remote file's name in the current directory; into
  a local directory (or a path ending in ``/``), that name inside it; ``-`` is
  standard output; anything else is the local file's path.

The remote names built here are checked by the server like any other; the local
paths are where the local user said, and nothing from the server widens them.
"""

from __future__ import annotations

import os

from ..errors import UsageError


def join_remote(directory: str, name: str) -> str:
    """``directory/name`` for a remote directory ("" is the root)."""
    directory = directory.rstrip("/")
    return f"{directory}/{name}" if directory else name


def put_needs_stat(sources: int, remote: str) -> bool:
    """Whether one upload's target must be asked about (is it a directory?)."""
    return sources == 1 and bool(remote) and not remote.endswith("/")


def put_targets(sources: list[str], remote: str, *, remote_is_dir: bool) -> list[str]:
    """The remote name of each local file (see the module docstring)."""
    into_dir = remote_is_dir or not put_needs_stat(len(sources), remote)
    if not into_dir:
        return [remote]
    names = []
    for source in sources:
        name = os.path.basename(os.path.normpath(source))
        if name in ("", ".", ".."):
            raise UsageError(f"{source!r} does not name a file to upload")
        names.append(join_remote(remote, name))
    return names


def remote_basename(remote: str) -> str:
    return remote.rstrip("/").rsplit("/", 1)[-1]


def get_target(remote: str, local: str | None) -> str | None:
    """The local path a download goes to; None means standard output (``-``)."""
    if local == "-":
        return None
    name = remote_basename(remote)
    if local is None or local == "":
        return name
    if local.endswith(("/", os.sep)) or os.path.isdir(local):
        return os.path.join(local, name)
    return local
