"""What a user meets at the command line (issue 10, items 10-13 and 16), through the
real CLI against the real server (or a stand-in where the point is a peer that is
not ftransfer): failures reported per file, trailing slashes, fast failures, kept
permission bits, no-clobber, what the summaries and bars say, IPv6 addresses,
closed pipes, usage errors, and which side a "not found" is on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess, run_cli

from ftransfer.errors import ExitCode

FAST_S = 5.0
"""'Fails at once': the slow failures were a 30 s give-up or a 60 s idle timeout,
and a normal failure takes a fraction of a second; 5 s is far from both."""


def err_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode().strip().splitlines()


# ---- 10: a multi-file put reports every failure ------------------------------------


@pytest.mark.parametrize("transport", [[], ["--udp"]], ids=["tcp", "udp"])
def test_a_multi_file_put_prints_a_line_for_every_failure(
    server: ServerProcess, tmp_path: Path, transport: list[str]
) -> None:
    (tmp_path / "good").write_bytes(b"good")
    (tmp_path / "taken").write_bytes(b"new")
    (server.root / "taken").write_bytes(b"old")
    sources = [
        tmp_path / "missing-1",
        tmp_path / "good",
        tmp_path / "taken",
        tmp_path / "missing-2",
    ]
    result = run_cli("put", "-q", "--no-clobber", *transport, *map(str, sources), server.remote())
    assert result.returncode == ExitCode.NOT_FOUND  # the first failure's code
    errors = [line for line in err_lines(result) if line.startswith("ftransfer: error:")]
    assert len(errors) == 3, result.stderr
    assert "missing-1" in errors[0] and "taken: exists" in errors[1] and "missing-2" in errors[2]
    assert (server.root / "good").read_bytes() == b"good"  # the failures did not stop it
    assert (server.root / "taken").read_bytes() == b"old"


# ---- 11: trailing slashes ----------------------------------------------------------


@pytest.mark.parametrize("transport", [[], ["--udp"]], ids=["tcp", "udp"])
def test_a_trailing_slash_names_a_directory(
    server: ServerProcess, tmp_path: Path, transport: list[str]
) -> None:
    (server.root / "dir").mkdir()
    (server.root / "dir" / "file").write_bytes(b"x")
    (server.root / "empty").mkdir()
    listing = run_cli("ls", *transport, server.remote("dir/"))
    assert listing.returncode == 0 and b" file\n" in listing.stdout, listing.stderr
    stat = run_cli("stat", *transport, server.remote("dir/"))
    assert stat.returncode == 0 and b"type: directory" in stat.stdout, stat.stderr
    removed = run_cli("rm", *transport, server.remote("empty/"))
    assert removed.returncode == 0 and not (server.root / "empty").exists(), removed.stderr

    down = tmp_path / "down"
    down.mkdir()
    file_as_dir = run_cli("get", *transport, server.remote("dir/file/"), str(down))
    assert file_as_dir.returncode == ExitCode.REFUSED, file_as_dir.stderr
    assert err_lines(file_as_dir)[-1].endswith("dir/file: not a directory")
    a_dir = run_cli("get", *transport, server.remote("dir/"), str(down))
    assert a_dir.returncode == ExitCode.REFUSED, a_dir.stderr
    assert "dir/: is a directory" in err_lines(a_dir)[-1]
    assert os.listdir(down) == []


# ---- 12: a closed port, or a service that is not ftransfer, fails fast ----------------


def closed_udp_port() -> int:
    """A loopback UDP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ["get", "--udp", "127.0.0.1:{port}/f", "{dir}/"],
        ["get", "udp://127.0.0.1:{port}/f", "{dir}/"],
        ["put", "--udp", "{file}", "127.0.0.1:{port}/f"],
        ["ls", "--udp", "127.0.0.1:{port}/"],
        ["get", "tftp://127.0.0.1:{port}/f", "{dir}/"],
        ["put", "{file}", "tftp://127.0.0.1:{port}/f"],
    ],
    ids=["get-udp", "get-udp-url", "put-udp", "ls-udp", "get-tftp", "put-tftp"],
)
def test_a_closed_udp_port_fails_at_once(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "file").write_bytes(b"x")
    port = closed_udp_port()
    args = [a.format(port=port, dir=tmp_path, file=tmp_path / "file") for a in command]
    started = time.monotonic()
    result = run_cli(*args)
    assert time.monotonic() - started < FAST_S  # ICMP port unreachable, not the give-up
    assert result.returncode == ExitCode.CONNECTION, result.stderr
    assert "port unreachable" in err_lines(result)[-1]


def _garbage(conn: socket.socket) -> None:
    conn.sendall(bytes(range(256)) * 4)


def _http(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _ssh_banner(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


def _hang_up(conn: socket.socket) -> None:
    """Accept and close without a word (nothing read: the peer sees a reset)."""


def _read_and_hang_up(conn: socket.socket) -> None:
    conn.recv(65536)  # (what was sent is read: the peer sees an orderly close)


def serve_each(listener: socket.socket, behave: Callable[[socket.socket], None]) -> None:
    while True:
        try:
            conn, _address = listener.accept()
        except OSError:
            return  # closed
        with conn, contextlib.suppress(OSError):
            behave(conn)


@pytest.fixture
def impostor(request: pytest.FixtureRequest) -> Iterator[int]:
    """A TCP service that is not ftransfer, behaving as the test's parameter says."""
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=serve_each, args=(listener, request.param), daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    listener.close()


@pytest.mark.parametrize(
    "impostor",
    [_garbage, _http, _ssh_banner, _hang_up, _read_and_hang_up],
    ids=["garbage", "http", "ssh-banner", "hang-up", "read-and-hang-up"],
    indirect=True,
)
@pytest.mark.parametrize("command", ["ls", "get", "stat"])
def test_a_tcp_service_that_is_not_ftransfer_is_a_protocol_error_at_once(
    impostor: int, tmp_path: Path, command: str
) -> None:
    started = time.monotonic()
    result = run_cli(command, f"127.0.0.1:{impostor}/f", cwd=tmp_path)
    assert time.monotonic() - started < FAST_S  # not the 60 s idle timeout
    assert result.returncode == ExitCode.PROTOCOL, result.stderr
    [line] = err_lines(result)
    assert line.startswith(f"ftransfer: error: 127.0.0.1:{impostor} ")
    assert "does not speak ftransfer" in line
    assert os.listdir(tmp_path) == []
