"""What a user meets at the command line (issue 10, items 10-13 and 16), through the
real CLI against the real server (or a stand-in where the point is a peer that is
not ftransfer): failures reported per file, trailing slashes, fast failures, kept
permission bits, no-clobber, what the summaries and bars say, IPv6 addresses,
closed pipes, usage errors, and which side a "not found" is on.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CLI, ServerProcess, run_cli, run_on_a_terminal, temporaries
from test_tftp_integration import TftpServer
from test_udp_integration import RelayProcess

from ftransfer.errors import ExitCode

PATIENT = ("--give-up", "600", "--timeout", "600")
"""'Fails at once' without a clock: with the give-up and idle timeout far past
run_cli's (and pytest's) 120 s, a client that waited for either instead of
taking the fast path fails the test by running out of time; the exit code and
message then say which path ended it."""


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
        ["get", "--udp", "--insecure", "127.0.0.1:{port}/f", "{dir}/"],
        ["get", "--insecure", "udp://127.0.0.1:{port}/f", "{dir}/"],
        ["put", "--udp", "--insecure", "{file}", "127.0.0.1:{port}/f"],
        ["ls", "--udp", "--insecure", "127.0.0.1:{port}/"],
        ["get", "tftp://127.0.0.1:{port}/f", "{dir}/"],
        ["put", "{file}", "tftp://127.0.0.1:{port}/f"],
    ],
    ids=["get-udp", "get-udp-url", "put-udp", "ls-udp", "get-tftp", "put-tftp"],
)
def test_a_closed_udp_port_fails_at_once(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "file").write_bytes(b"x")
    port = closed_udp_port()
    args = [a.format(port=port, dir=tmp_path, file=tmp_path / "file") for a in command]
    result = run_cli(*args, *PATIENT)  # only ICMP can end it within run_cli's timeout
    assert result.returncode == ExitCode.CONNECTION, result.stderr
    assert "port unreachable" in err_lines(result)[-1]  # the ICMP path's own message


def test_sealed_udp_to_a_closed_port_fails_at_once(tmp_path: Path) -> None:
    """Without --insecure a UDP request first fetches its keys over TLS: nothing
    listening there is a refused TCP connection, not a wait for UDP answers."""
    port = closed_udp_port()
    result = run_cli("get", "--udp", f"127.0.0.1:{port}/f", f"{tmp_path}/", *PATIENT)
    assert result.returncode == ExitCode.CONNECTION, result.stderr
    assert "cannot connect" in err_lines(result)[-1]


def test_ping_to_a_closed_port_fails_at_once() -> None:
    # a 600 s wait for the echo: only ICMP can end it within run_cli's timeout
    result = run_cli("ping", "-c", "1", "--timeout", "600", f"127.0.0.1:{closed_udp_port()}")
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
    # PATIENT: an idle timeout of 600 s, so only recognising the impostor ends it in time
    # --insecure: the plaintext protocol's own check (with TLS the handshake fails first)
    result = run_cli(command, f"127.0.0.1:{impostor}/f", "--insecure", *PATIENT, cwd=tmp_path)
    assert result.returncode == ExitCode.PROTOCOL, result.stderr
    [line] = err_lines(result)
    assert line.startswith(f"ftransfer: error: 127.0.0.1:{impostor} ")
    assert "does not speak ftransfer" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("impostor", "reason"),
    [
        (_garbage, "does not speak TLS"),
        (_http, "does not speak TLS"),
        (_ssh_banner, "does not speak TLS"),
        (_hang_up, "closed the connection during the TLS handshake"),
        (_read_and_hang_up, "closed the connection during the TLS handshake"),
    ],
    ids=["garbage", "http", "ssh-banner", "hang-up", "read-and-hang-up"],
    indirect=["impostor"],
)
def test_a_tcp_service_without_tls_is_a_connection_error_at_once(
    impostor: int, reason: str, tmp_path: Path
) -> None:
    result = run_cli("get", f"127.0.0.1:{impostor}/f", *PATIENT, cwd=tmp_path)
    assert result.returncode == ExitCode.CONNECTION, result.stderr
    [line] = err_lines(result)
    assert line.startswith(f"ftransfer: error: 127.0.0.1:{impostor} {reason}")
    assert os.listdir(tmp_path) == []


# ---- 13: permission bits and no-clobber ---------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """A known umask for this process and the server and CLI it starts."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.mark.parametrize("transport", [[], ["--udp"]], ids=["tcp", "udp"])
def test_the_exec_bit_survives_put_and_get(
    umask_022: None, served: Path, tmp_path: Path, transport: list[str]
) -> None:
    srv = ServerProcess(served, log=tmp_path / "log")
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o750)
    sent = run_cli("put", "-q", *transport, str(tool), srv.remote())
    assert sent.returncode == 0, sent.stderr
    assert (served / "tool.sh").stat().st_mode & 0o770 == 0o750
    back = tmp_path / "back"
    back.mkdir()
    got = run_cli("get", "-q", *transport, srv.remote("tool.sh"), str(back))
    assert got.returncode == 0, got.stderr
    assert (back / "tool.sh").stat().st_mode & 0o770 == 0o750
    assert srv.stop() == 0


@pytest.mark.parametrize("transport", [[], ["--udp"]], ids=["tcp", "udp"])
def test_get_no_clobber_refuses_to_replace_a_local_file(
    server: ServerProcess, tmp_path: Path, transport: list[str]
) -> None:
    (server.root / "f").write_bytes(b"remote")
    (tmp_path / "f").write_bytes(b"mine")
    refused = run_cli("get", "--no-clobber", *transport, server.remote("f"), str(tmp_path / "f"))
    assert refused.returncode == ExitCode.REFUSED, refused.stderr
    assert "exists" in err_lines(refused)[-1] and "local" in err_lines(refused)[-1]
    assert (tmp_path / "f").read_bytes() == b"mine" and temporaries(tmp_path) == []
    replaced = run_cli("get", *transport, server.remote("f"), str(tmp_path / "f"))
    assert replaced.returncode == 0 and (tmp_path / "f").read_bytes() == b"remote"


def test_mv_no_clobber_refuses_to_replace_the_destination(server: ServerProcess) -> None:
    (server.root / "a").write_bytes(b"a")
    (server.root / "b").write_bytes(b"b")
    refused = run_cli("mv", "--no-clobber", server.remote("a"), "b")
    assert refused.returncode == ExitCode.REFUSED and b"exists" in refused.stderr
    assert (server.root / "a").read_bytes() == b"a" and (server.root / "b").read_bytes() == b"b"
    assert run_cli("mv", server.remote("a"), "b").returncode == 0
    assert (server.root / "b").read_bytes() == b"a" and not (server.root / "a").exists()


# ---- 16: summaries, bars and units ---------------------------------------------------


def test_a_single_file_udp_summary_counts_the_bytes(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(3_000_000))
    sent = run_cli("put", "--udp", str(tmp_path / "f"), server.remote())
    assert sent.returncode == 0, sent.stderr
    [summary] = err_lines(sent)
    assert summary.startswith("udp: 3,000,000 bytes in ") and " MB/s)" in summary
    assert "data datagrams sent" in summary and " 0 received" not in summary
    got = run_cli("get", "--udp", server.remote("f"), str(tmp_path / "g"))
    [summary] = err_lines(got)
    assert summary.startswith("udp: 3,000,000 bytes in ") and "data datagrams received" in summary


def on_a_terminal(*args: str) -> str:
    """What the CLI drew on a pty, as text (``run_on_a_terminal``)."""
    return run_on_a_terminal(*args).decode(errors="replace")


def test_a_multi_file_udp_put_prints_summaries_above_the_bars(
    server: ServerProcess, tmp_path: Path
) -> None:
    sizes = {"a.bin": 3_000_000, "b.bin": 20_000_000, "c.bin": 3_000_000}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(os.urandom(size))
    shown = on_a_terminal("put", "--udp", *(str(tmp_path / n) for n in sizes), server.remote())
    raw = [s.strip() for s in re.split(r"[\r\n]", shown) if s.strip()]
    summaries = [s for s in raw if "udp: " in s]
    assert len(summaries) == 3, shown
    for line in summaries:  # each on a line of its own: no bar, no cursor movement
        assert line.startswith("udp: ") and "%|" not in line and "\x1b" not in line
    segments = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", s) for s in raw]
    assert sorted(s.split(" bytes")[0] for s in summaries) == sorted(
        f"udp: {size:,}" for size in sizes.values()
    )
    # The overall bar knows the total (26.0 MB, decimal like the summaries' MB/s)
    # and so shows an ETA ([elapsed<remaining]); the file bars use the same units.
    overall = [s for s in segments if re.match(r"[0-3]/3 files:", s)]
    assert overall and all("/26.0M [" in s for s in overall), overall
    assert any(re.search(r"\[\d\d:\d\d<(\d\d:\d\d|\?)", s) for s in overall), overall
    assert any("/20.0M [" in s for s in segments if s.startswith("b.bin:"))  # 19.1M if binary
    assert any(s.startswith("0/3 files:") for s in overall)  # it counts files done
    # Each summary is printed as its file ends, above the bars that go on: a.bin's
    # before b.bin's bar starts, and the overall bar is drawn again below the last.
    first = next(i for i, s in enumerate(raw) if s.startswith("udp: "))
    assert first < next(i for i, s in enumerate(segments) if s.startswith("b.bin:"))
    last = max(i for i, s in enumerate(raw) if s.startswith("udp: "))
    assert last < max(i for i, s in enumerate(segments) if s.startswith("3/3 files:"))


def test_a_udp_upload_bar_moves_while_the_file_is_sent(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Through the relay at 1 MB/s the 3 MB take about 3 s, so the bar (redrawn at
    most every 0.1 s) has time to show where the upload is, not only 0 and 100 %."""
    (tmp_path / "up.bin").write_bytes(os.urandom(3_000_000))
    relay = RelayProcess(server.port, "--rate", "8")
    try:
        shown = on_a_terminal(
            "put",
            "--tcp-port",
            str(server.port),  # the relay carries UDP; the keys come over TLS directly
            str(tmp_path / "up.bin"),
            f"udp://127.0.0.1:{relay.port}/",
        )
    finally:
        assert relay.stop() == 0
    percents = {int(p) for p in re.findall(r"up\.bin: +(\d+)%", shown)}
    assert {0, 100} <= percents and percents - {0, 100}, percents


# ---- 16: IPv6 addresses --------------------------------------------------------------


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_addresses_are_written_and_shown_in_brackets(served: Path, tmp_path: Path) -> None:
    (served / "dir").mkdir()
    (served / "dir" / "f").write_bytes(b"six")
    srv = ServerProcess(served, "--host", "::1", log=tmp_path / "log")
    assert f"tcp://[::1]:{srv.port}" in srv.ready_line
    for transport in ([], ["--udp"]):
        listing = run_cli("ls", *transport, f"[::1]:{srv.port}")
        assert listing.returncode == 0 and b" dir/\n" in listing.stdout, listing.stderr
        listing = run_cli("ls", *transport, f"[::1]:{srv.port}/dir/")
        assert listing.returncode == 0 and b" f\n" in listing.stdout, listing.stderr
        missing = run_cli("get", *transport, f"[::1]:{srv.port}/nope", str(tmp_path / "x"))
        assert missing.returncode == ExitCode.NOT_FOUND
        assert err_lines(missing)[-1].startswith(f"ftransfer: error: [::1]:{srv.port}: nope")
    assert srv.stop() == 0
    # A bare ::1 is host ::1 on the default port, and errors show it bracketed.
    bare = run_cli("ls", "::1")
    assert bare.returncode == 0 or "[::1]:9021" in err_lines(bare)[-1], bare.stderr
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as closed:
        closed.bind(("::1", 0))  # bound, not listening: a connection is refused
        port = closed.getsockname()[1]
        refused = run_cli("ls", f"[::1]:{port}/")
        assert refused.returncode == ExitCode.CONNECTION
        assert f"cannot connect to [::1]:{port}: " in err_lines(refused)[-1]
        refused = run_cli("ls", "--udp", "--insecure", f"[::1]:{port}/")
        assert refused.returncode == ExitCode.CONNECTION
        assert f"udp [::1]:{port}: port unreachable" in err_lines(refused)[-1]


# ---- 16: a closed output, usage errors, which side is missing --------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp", "tftp"])
def test_get_to_a_pipe_closed_early_exits_quietly(
    served: Path, tmp_path: Path, transport: str
) -> None:
    (served / "big").write_bytes(os.urandom(8 << 20))  # far more than a pipe holds
    srv = TftpServer(served, "--tftp-port", "0", log=tmp_path / "log")
    try:
        port = srv.tftp_port if transport == "tftp" else srv.port
        proc = subprocess.Popen(
            [*CLI, "get", f"{transport}://127.0.0.1:{port}/big", "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        assert len(proc.stdout.read(10)) == 10  # head -c 10
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) in (141, 0)
        assert err == b""
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["get", "--blksize", "1024", "127.0.0.1:9/f"], "get"),
        (["put", "--blksize", "1024", "x", "udp://127.0.0.1:9/"], "put"),
        (["get", "--udp", "--windowsize", "4", "127.0.0.1:9/f"], "get"),
        (["put", "only-one"], "put"),
        (["get"], "get"),
        (["mv", "127.0.0.1:9/a"], "mv"),
        (["ls", "127.0.0.1:99999/"], "ls"),
        (["stat", "--udp", "tftp://127.0.0.1:9/f"], "stat"),
    ],
)
def test_a_usage_error_prints_the_commands_usage(args: list[str], command: str) -> None:
    result = run_cli(*args)
    assert result.returncode == ExitCode.USAGE, result.stderr
    text = result.stderr.decode()
    assert text.startswith(f"usage: ftransfer {command} ")
    assert f"ftransfer {command}: error: " in text and "Traceback" not in text


def test_the_put_usage_line_reads_as_it_is_used() -> None:
    result = run_cli("put", "--help")
    assert result.returncode == 0
    [usage] = [line for line in result.stdout.decode().splitlines() if "usage:" in line]
    assert usage.strip() == "usage: ftransfer put [options] LOCAL... REMOTE"


def test_not_found_says_which_side(server: ServerProcess, tmp_path: Path) -> None:
    remote = run_cli("get", server.remote("nope"), str(tmp_path / "nope"))
    local = run_cli("put", str(tmp_path / "nope"), server.remote())
    assert remote.returncode == local.returncode == ExitCode.NOT_FOUND
    assert err_lines(remote) == [f"ftransfer: error: 127.0.0.1:{server.port}: nope: "
                                 "No such file or directory"]  # fmt: skip
    assert err_lines(local) == [f"ftransfer: error: local {tmp_path / 'nope'}: "
                                "No such file or directory"]  # fmt: skip


# ---- 16: the client where O_DIRECTORY and O_NOFOLLOW do not exist --------------------


def test_the_client_works_without_o_directory_and_o_nofollow(
    server: ServerProcess, tmp_path: Path
) -> None:
    (server.root / "f").write_bytes(b"portable")
    script = f"""
import os
del os.O_DIRECTORY, os.O_NOFOLLOW
import ftransfer
from ftransfer.client import Client as Direct
assert ftransfer.Client is Direct
with ftransfer.Client("tcp://127.0.0.1:{server.port}") as client:
    client.get("f", {str(tmp_path / "f")!r})
    client.put({str(tmp_path / "f")!r}, "g")
print("ok")
"""
    result = subprocess.run(
        [CLI[0], "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
    assert (tmp_path / "f").read_bytes() == b"portable"
    assert (server.root / "g").read_bytes() == b"portable"
