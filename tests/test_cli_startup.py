"""Start-up is part of the product (ARCHITECTURE, principle 13): ``ftransfer
--version`` and a one-file TCP ``get`` import only what they need.

The CLI's ``main`` runs in a subprocess that prints ``sorted(sys.modules)`` at exit.
It runs with ``-S`` and the package and its dependencies on PYTHONPATH: the
virtualenv's site hooks (the editable install's finder imports pathlib, re,
contextlib, ipaddress, ...) would otherwise hide what the CLI itself imports.
Each list below holds only modules that these commands do not import today and
whose import would cost a measurable part of the start-up budget (or pull in a
subsystem the command does not use): a regression, not a preference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import ServerProcess

REPOSITORY = Path(__file__).resolve().parent.parent
WRAPPER = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n"))
from ftransfer.cli import main
raise SystemExit(main(sys.argv[1:]))
"""

HEAVY = {
    "asyncio",  # ~15 ms: the blocking client and --version need no event loop
    "dataclasses",  # records are _records.Record
    "logging",  # the server logs; the client never does
    "pathlib",
    "shutil",  # (and bz2, lzma, fnmatch with it)
    "contextlib",
    "typing",  # annotations are strings; TYPE_CHECKING blocks only
    "socket",  # the blocking client uses _socket (enum conversion of constants)
    "selectors",
    "threading",
    "subprocess",
    "ssl",
    "json",  # only --json
    "tqdm",  # only when stderr is a terminal
}
NOT_FOR_VERSION = HEAVY | {"argparse", "re", "xxhash", "ftransfer.client", "ftransfer.config"}
TLS = {"ssl", "socket", "selectors"}
"""What a TLS connection needs (ssl imports socket, which imports selectors):
about 10 ms, paid by every default (encrypted) TCP command, not by --insecure."""
NOT_FOR_TCP_GET = HEAVY | {
    "datetime",  # only listings and stat print times
    "random",
    "encodings.idna",  # ASCII host names are encoded without the codec
    "ftransfer.server",
    "ftransfer.io.udp",
    "ftransfer.client.udp",
    "ftransfer.client.tftp",
    "ftransfer.proto.udp",
    "ftransfer.proto.tftp",
}


def modules_after(*args: str, cwd: Path) -> set[str]:
    """The modules imported by the time ``ftransfer ARGS`` exits (which must be 0)."""
    paths = [str(REPOSITORY), *{sysconfig.get_paths()[k] for k in ("purelib", "platlib")}]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(
        [sys.executable, "-S", "-c", WRAPPER, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("MODULES ")]
    return set(line.split()[1:])


def test_version_imports_next_to_nothing(tmp_path: Path) -> None:
    loaded = modules_after("--version", cwd=tmp_path)
    assert "ftransfer.cli" in loaded  # the wrapper measured the real thing
    assert sorted(loaded & NOT_FOR_VERSION) == []


def test_a_tcp_get_imports_only_the_tcp_client(server: ServerProcess, tmp_path: Path) -> None:
    (server.root / "f").write_bytes(b"x" * 100_000)
    loaded = modules_after("get", server.remote("f"), cwd=tmp_path)
    assert (tmp_path / "f").read_bytes() == b"x" * 100_000
    assert "ftransfer.client.tcp" in loaded and "xxhash" in loaded and "ssl" in loaded
    assert sorted(loaded & (NOT_FOR_TCP_GET - TLS)) == []


def test_an_insecure_tcp_get_imports_no_tls(served: Path, tmp_path: Path) -> None:
    (served / "f").write_bytes(b"x" * 100_000)
    server = ServerProcess(served, "--insecure", "--no-udp", log=tmp_path / "log")
    try:
        loaded = modules_after("get", "--insecure", server.remote("f"), cwd=tmp_path)
    finally:
        assert server.stop() == 0
    assert (tmp_path / "f").read_bytes() == b"x" * 100_000
    assert "ftransfer.client.tcp" in loaded
    assert sorted(loaded & NOT_FOR_TCP_GET) == []
