"""The real server (subprocess) and the real CLI, over loopback TCP."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import CLI, RawPeer, ServerProcess, run_cli, run_on_a_terminal, temporaries

from ftransfer.checksum import digest_bytes
from ftransfer.config import MAX_FRAME_BYTES, SMALL_FILE_BYTES
from ftransfer.errors import ExitCode
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role
from ftransfer.proto.tcp.frames import FrameType

SIZES = [
    0,
    1,
    SMALL_FILE_BYTES,
    SMALL_FILE_BYTES + 1,
    MAX_FRAME_BYTES - 1,
    MAX_FRAME_BYTES,
    MAX_FRAME_BYTES + 1,
    2 * MAX_FRAME_BYTES + 1,
]


def json_lines(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.mark.parametrize("size", SIZES)
def test_put_then_get_is_byte_exact(server: ServerProcess, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    local = tmp_path / "in.bin"
    local.write_bytes(data)
    put = run_cli("put", "--json", str(local), server.remote("f.bin"))
    assert put.returncode == 0, put.stderr
    [record] = json_lines(put.stdout)
    assert record["bytes"] == size and record["digest"] == digest_bytes(data).hex()
    assert (server.root / "f.bin").read_bytes() == data
    got = run_cli("get", "--json", server.remote("f.bin"), str(tmp_path / "out.bin"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    assert json_lines(got.stdout)[0]["digest"] == digest_bytes(data).hex()
    assert temporaries(server.root) == [] and temporaries(tmp_path) == []


def test_100_mib_random_file(server: ServerProcess, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    with open(local, "wb") as out:
        for _ in range(100):
            out.write(os.urandom(1 << 20))
    assert run_cli("put", "-q", str(local), server.remote()).returncode == 0
    assert (
        run_cli("get", "-q", server.remote("big.bin"), str(tmp_path / "back.bin")).returncode == 0
    )
    expected = digest_bytes(local.read_bytes())
    assert digest_bytes((server.root / "big.bin").read_bytes()) == expected
    assert digest_bytes((tmp_path / "back.bin").read_bytes()) == expected


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]) / 1024


def test_server_memory_stays_flat_with_file_size(server: ServerProcess, tmp_path: Path) -> None:
    """A 256 MiB round trip costs the server no more memory than a 4 MiB one."""
    peaks = []
    for size in (4 << 20, 256 << 20):
        local = tmp_path / f"m{size}"
        with open(local, "wb") as out:
            out.truncate(size)  # sparse: content does not matter here, size does
        assert run_cli("put", "-q", str(local), server.remote(local.name)).returncode == 0
        assert (
            run_cli("get", "-q", server.remote(local.name), str(tmp_path / "back")).returncode == 0
        )
        peaks.append(_peak_rss_mib(server.proc.pid))
    assert peaks[1] - peaks[0] < 8, peaks


def test_put_and_get_keep_names_in_directories(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"alpha")
    (server.root / "dir").mkdir()
    assert run_cli("put", str(tmp_path / "a.txt"), server.remote("dir")).returncode == 0
    assert (server.root / "dir" / "a.txt").read_bytes() == b"alpha"
    assert run_cli("put", str(tmp_path / "a.txt"), server.remote("new/")).returncode != 0
    down = tmp_path / "down"
    down.mkdir()
    assert run_cli("get", server.remote("dir/a.txt"), str(down)).returncode == 0
    assert (down / "a.txt").read_bytes() == b"alpha"
    assert run_cli("get", server.remote("dir/a.txt"), cwd=down / ".").returncode == 0
    out = run_cli("get", server.remote("dir/a.txt"), "-")
    assert out.returncode == 0 and out.stdout == b"alpha"


def test_progress_bars_on_a_terminal_only(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(os.urandom(3 << 20))
    (tmp_path / "b.bin").write_bytes(b"b")
    shown = run_on_a_terminal(
        "put", str(tmp_path / "a.bin"), str(tmp_path / "b.bin"), server.remote()
    )
    assert b"2 files" in shown and b"100%" in shown and b"a.bin" in shown
    shown = run_on_a_terminal("get", server.remote("a.bin"), str(tmp_path / "c.bin"))
    assert b"a.bin" in shown and b"100%" in shown
    quiet = run_on_a_terminal("get", "-q", server.remote("a.bin"), str(tmp_path / "d.bin"))
    assert b"%" not in quiet
    piped = run_cli("get", server.remote("a.bin"), str(tmp_path / "e.bin"))
    assert piped.stderr == b""  # not a terminal: no bars


def test_1000_small_files_in_one_command(server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    contents = {f"f{i:04d}": os.urandom(4096) for i in range(1000)}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    assert run_cli("mkdir", server.remote("many")).returncode == 0
    result = run_cli("put", "--json", *(str(src / n) for n in contents), server.remote("many/"))
    assert result.returncode == 0, result.stderr
    assert len(json_lines(result.stdout)) == 1000
    for name, data in contents.items():
        assert (server.root / "many" / name).read_bytes() == data
    listing = run_cli("ls", "--json", server.remote("many"))
    assert sorted(str(r["name"]) for r in json_lines(listing.stdout)) == sorted(contents)


def test_20_concurrent_clients(server: ServerProcess, tmp_path: Path) -> None:
    blobs = {i: os.urandom(200_000 + i) for i in range(20)}
    for i, data in blobs.items():
        (tmp_path / f"c{i}").write_bytes(data)
    puts = [
        subprocess.Popen([*CLI, "put", "-q", str(tmp_path / f"c{i}"), server.remote()])
        for i in blobs
    ]
    assert [p.wait(timeout=120) for p in puts] == [0] * 20
    gets = [
        subprocess.Popen([*CLI, "get", "-q", server.remote(f"c{i}"), str(tmp_path / f"g{i}")])
        for i in blobs
    ]
    assert [p.wait(timeout=120) for p in gets] == [0] * 20
    for i, data in blobs.items():
        assert (tmp_path / f"g{i}").read_bytes() == data


def test_20_clients_putting_the_same_name(server: ServerProcess, tmp_path: Path) -> None:
    blobs = [os.urandom(1 << 20) for _ in range(20)]
    for i, data in enumerate(blobs):
        (tmp_path / f"s{i}").write_bytes(data)
    procs = [
        subprocess.Popen([*CLI, "put", "-q", str(tmp_path / f"s{i}"), server.remote("same")])
        for i in range(20)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 20
    assert (server.root / "same").read_bytes() in blobs
    assert os.listdir(server.root) == ["same"]


def _start_upload(server: ServerProcess, name: str, size: int) -> RawPeer:
    peer = RawPeer(server.port)
    peer.send(
        ev.HelloOffered(min_version=4, max_version=4),
        ev.PutRequested(path=name, size=size, mtime_ns=-1, mode=0o644, exclusive=False),
    )
    peer.send_raw(peer.conn.start_data(1 << 20) + os.urandom(1 << 20))
    server.wait_for_log(f"put {name}: receiving")
    return peer


def test_kill_9_mid_upload_leaves_nothing_at_the_final_name(served: Path, tmp_path: Path) -> None:
    (served / "existing").write_bytes(b"old")
    srv = ServerProcess(served, "--log-level", "debug", log=tmp_path / "log", pipe_log=True)
    fresh = _start_upload(srv, "fresh", 8 << 20)
    srv.kill()
    fresh.close()
    assert not (served / "fresh").exists()
    srv = ServerProcess(served, "--log-level", "debug", log=tmp_path / "log", pipe_log=True)
    replacing = _start_upload(srv, "existing", 8 << 20)
    srv.kill()
    replacing.close()
    assert (served / "existing").read_bytes() == b"old"
    srv = ServerProcess(served, log=tmp_path / "log2")
    listing = run_cli("ls", "--json", srv.remote())
    assert [r["name"] for r in json_lines(listing.stdout)] == ["existing"]
    assert temporaries(served) == []  # swept at start
    assert srv.stop() == 0


def test_sigterm_mid_upload_exits_cleanly_without_temporaries(served: Path, tmp_path: Path) -> None:
    srv = ServerProcess(served, "--log-level", "debug", log=tmp_path / "log", pipe_log=True)
    peer = _start_upload(srv, "partial", 8 << 20)
    assert srv.stop() == 0
    peer.close()
    assert os.listdir(served) == []


def test_garbage_and_huge_length_prefix_do_not_stop_the_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    noise = RawPeer(server.port)
    noise.send_raw(os.urandom(65536))
    noise.read_until_closed()
    noise.close()
    huge = RawPeer(server.port)
    huge.send_raw(struct.pack(">BI", FrameType.HELLO, 0xFFFFFFFF))
    reply = huge.read_until_closed()
    assert reply[:1] == bytes([FrameType.ERROR]) and b"exceeds" in reply
    huge.close()
    after_hello = RawPeer(server.port)
    after_hello.send(ev.HelloOffered(min_version=4, max_version=4))
    after_hello.send_raw(struct.pack(">BI", FrameType.DATA, 0xFFFFFFFF))
    assert after_hello.read_until_closed()  # HELLO_OK, then the connection is closed
    after_hello.close()
    (tmp_path / "x").write_bytes(b"still serving")
    assert run_cli("put", str(tmp_path / "x"), server.remote()).returncode == 0
    assert run_cli("get", server.remote("x"), "-").stdout == b"still serving"


def test_too_large_upload_is_refused_up_front(served: Path, tmp_path: Path) -> None:
    srv = ServerProcess(served, "--max-file-size", "1M", log=tmp_path / "log")
    (tmp_path / "big").write_bytes(os.urandom(64 << 20))
    (tmp_path / "ok").write_bytes(b"fits")
    result = run_cli("put", str(tmp_path / "big"), str(tmp_path / "ok"), srv.remote("d/"))
    assert result.returncode == ExitCode.REFUSED and b"exceeds the limit" in result.stderr
    assert os.listdir(served) == []  # d/ does not exist: the second file fails too, cleanly
    (served / "d").mkdir()
    result = run_cli("put", str(tmp_path / "big"), str(tmp_path / "ok"), srv.remote("d/"))
    assert result.returncode == ExitCode.REFUSED
    assert os.listdir(served / "d") == ["ok"]  # the refusal did not stop the batch
    assert srv.stop() == 0


def test_version_mismatch_is_refused_clearly(server: ServerProcess) -> None:
    peer = RawPeer(server.port)
    peer.send(ev.HelloOffered(min_version=7, max_version=9))
    [reply, *_rest] = peer.events()
    assert isinstance(reply, ev.Failed) and reply.code == 2
    peer.close()


def test_connection_caps_refuse_fast(served: Path, tmp_path: Path) -> None:
    srv = ServerProcess(served, "--max-per-address", "2", log=tmp_path / "log")
    held = []
    for _ in range(2):
        peer = RawPeer(srv.port)
        peer.send(ev.HelloOffered(min_version=4, max_version=4))
        assert isinstance(peer.events()[0], ev.HelloAccepted)
        held.append(peer)
    refused = run_cli("ls", srv.remote(), timeout=30)
    assert refused.returncode == ExitCode.CONNECTION
    assert b"too many connections" in refused.stderr
    for peer in held:
        peer.close()
    assert srv.stop() == 0


def test_slow_hello_hits_its_deadline_and_is_told_so(served: Path, tmp_path: Path) -> None:
    srv = ServerProcess(served, "--hello-timeout", "0.3", log=tmp_path / "log")
    slow = RawPeer(srv.port)
    slow.send_raw(b"\x01\x00")  # two bytes of a header, then nothing
    reply = slow.read_until_closed()
    code, message = struct.unpack(">H", reply[5:7])[0], reply[7:].decode()
    assert reply[0] == FrameType.ERROR and code == 42 and "timed out" in message
    slow.close()
    assert srv.stop() == 0


def test_read_only_server(served: Path, tmp_path: Path) -> None:
    (served / "r.txt").write_bytes(b"readable")
    srv = ServerProcess(served, "--read-only", log=tmp_path / "log")
    assert "read-only" in srv.ready_line
    (tmp_path / "w").write_bytes(b"w")
    for args in (
        ("put", str(tmp_path / "w"), srv.remote()),
        ("rm", srv.remote("r.txt")),
        ("mkdir", srv.remote("d")),
        ("mv", srv.remote("r.txt"), "s.txt"),
    ):
        result = run_cli(*args)
        assert result.returncode == ExitCode.REFUSED and b"read-only" in result.stderr
    assert run_cli("get", srv.remote("r.txt"), "-").stdout == b"readable"
    assert srv.stop() == 0


def test_exit_codes_and_one_line_errors(server: ServerProcess, tmp_path: Path) -> None:
    cases = [
        (("get", server.remote("missing")), ExitCode.NOT_FOUND),
        (("get", server.remote("../etc/passwd")), ExitCode.REFUSED),
        (("stat", server.remote("a\\b")), ExitCode.REFUSED),
        (("ls", "127.0.0.1:1/"), ExitCode.CONNECTION),
        (("get", "127.0.0.1:99999/x"), ExitCode.USAGE),
        (("put", str(tmp_path / "nonexistent"), server.remote()), ExitCode.NOT_FOUND),
    ]
    for args, code in cases:
        result = run_cli(*args)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.decode().strip().splitlines()
        assert lines and "Traceback" not in result.stderr.decode()
        assert lines[-1].startswith("ftransfer: error:") or "usage:" in lines[0]


@pytest.mark.parametrize(
    ("option", "args"),
    [
        ("--port", ("serve", "--port", "70000")),  # an int type let this wrap to port 4464
        ("--udp-port", ("serve", "--udp-port", "-1")),
        ("--tftp-port", ("serve", "--tftp-port", "65536")),
        ("--max-connections", ("serve", "--max-connections", "0")),
        ("-c/--count", ("ping", "127.0.0.1:9", "-c", "0")),  # was a ZeroDivisionError
        ("-i/--interval", ("ping", "127.0.0.1:9", "-i", "-1")),
        ("--chunk", ("get", "--udp", "--chunk", "10", "127.0.0.1:9/x")),
        ("--delay", ("relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--delay", "-5")),
        ("--rate", ("relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--rate", "0")),
    ],
)
def test_out_of_range_options_are_usage_errors(option: str, args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert f"argument {option}: must".encode() in result.stderr
    assert b"Traceback" not in result.stderr


def test_remote_commands(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    assert run_cli("mkdir", "-p", server.remote("a/b")).returncode == 0
    assert run_cli("put", str(tmp_path / "f"), server.remote("a/b/")).returncode == 0
    stat = json.loads(run_cli("stat", "--json", server.remote("a/b/f")).stdout)
    assert stat["size"] == 5 and stat["digest"] == digest_bytes(b"12345").hex()
    assert run_cli("mv", server.remote("a/b/f"), "a/g").returncode == 0
    assert (server.root / "a" / "g").read_bytes() == b"12345"
    assert run_cli("rm", server.remote("a/b")).returncode == 0
    assert run_cli("rm", server.remote("a")).returncode == ExitCode.REFUSED  # not empty
    os.mkfifo(server.root / "fifo")
    (server.root / "evil\x1bname").write_bytes(b"x")  # no request could name it
    listing = run_cli("ls", server.remote())
    assert b"fifo" in listing.stdout and b"evil" not in listing.stdout


def test_dual_stack_listener(served: Path, tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    (served / "v").write_bytes(b"both")
    srv = ServerProcess(served, "--host", "::", log=tmp_path / "log")
    assert run_cli("get", srv.remote("v", host="127.0.0.1"), "-").stdout == b"both"
    assert run_cli("get", srv.remote("v", host="::1"), "-").stdout == b"both"
    assert srv.stop() == 0


def _serve_once_with_bad_digest(listener: socket.socket, payload: bytes) -> None:
    conn, _addr = listener.accept()
    core = Connection(Role.SERVER)
    with conn:
        pending: list[ev.Event] = []
        while not any(isinstance(e, ev.GetRequested) for e in pending):
            core.receive_data(conn.recv(65536))
            while not isinstance(event := core.next_event(), ev.NeedData):
                assert not isinstance(event, ev.ConnectionClosed)
                pending.append(event)
        reply = core.send(
            ev.HelloAccepted(version=4, max_frame_bytes=MAX_FRAME_BYTES, read_only=False)
        )
        reply += core.send(ev.FileStarted(size=len(payload), mtime_ns=-1, mode=0o644))
        reply += core.send(ev.FileData(data=payload))
        reply += core.send(ev.FileEnded(digest=digest_bytes(payload + b"tampered")))
        conn.sendall(reply)
        conn.recv(65536)


def test_client_refuses_a_download_whose_digest_does_not_match(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=_serve_once_with_bad_digest, args=(listener, b"payload"))
    thread.start()
    port = listener.getsockname()[1]
    (tmp_path / "target").write_bytes(b"previous")
    result = run_cli("get", "--insecure", f"127.0.0.1:{port}/file", str(tmp_path / "target"))
    thread.join(timeout=30)
    listener.close()
    assert result.returncode == ExitCode.INTEGRITY, result.stderr
    assert b"mismatch" in result.stderr
    assert (tmp_path / "target").read_bytes() == b"previous"
    assert temporaries(tmp_path) == []


def test_a_silent_tcp_service_is_told_apart_after_the_connect_timeout(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    port = listener.getsockname()[1]
    # Silence is waited for as long as a connect (10 s, or --timeout if lower), then
    # it is a protocol error, not the idle timeout of a minute.
    result = run_cli("ls", "--insecure", "--timeout", "1.5", f"127.0.0.1:{port}/")
    listener.close()
    assert result.returncode == ExitCode.PROTOCOL
    assert b"did not answer HELLO within 1.5 s" in result.stderr


def _hello_then_silence(listener: socket.socket) -> None:
    conn, _addr = listener.accept()
    core = Connection(Role.SERVER)
    with conn:
        core.receive_data(conn.recv(65536))
        while not isinstance(core.next_event(), ev.NeedData):
            pass  # HELLO and the LIST, which is never answered
        conn.sendall(
            core.send(ev.HelloAccepted(version=4, max_frame_bytes=1 << 20, read_only=False))
        )
        conn.recv(65536)  # until the client gives up and closes


def test_a_server_that_stops_answering_times_out(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=_hello_then_silence, args=(listener,))
    thread.start()
    result = run_cli(
        "ls", "--insecure", "--timeout", "0.7", f"127.0.0.1:{listener.getsockname()[1]}/"
    )
    thread.join(timeout=30)
    listener.close()
    assert result.returncode == ExitCode.TIMEOUT, result.stderr
    assert b"stopped answering" in result.stderr


def test_ping_over_tcp_echoes_on_the_tls_connection(server: ServerProcess) -> None:
    done = run_cli("ping", "--tcp", "-c", "3", "-i", "0.01", server.remote())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert [line.split("seq=")[1].split()[0] for line in lines[:3]] == ["0", "1", "2"]
    assert all(" rtt=" in line for line in lines[:3])
    assert lines[4] == "3 sent, 3 received, 0.0% loss"
    assert lines[5].startswith("rtt min/avg/max/jitter = ")
    scheme = run_cli("ping", "-c", "1", f"tcp://127.0.0.1:{server.port}")
    assert scheme.returncode == 0 and b"1 sent, 1 received" in scheme.stdout


def test_a_pong_must_echo_its_ping(server: ServerProcess) -> None:
    """The core pairs each PONG with a PING; the server echoes what it was sent."""
    peer = RawPeer(server.port)
    try:
        peer.send(
            ev.HelloOffered(min_version=4, max_version=4),
            ev.PingRequested(seq=9, timestamp_ns=123),
        )
        seen: list[ev.Event | ev.ConnectionClosed] = []
        while not any(isinstance(e, ev.Ponged | ev.ConnectionClosed) for e in seen):
            seen.extend(peer.events())
        assert seen[-1] == ev.Ponged(seq=9, timestamp_ns=123)
    finally:
        peer.close()


def test_replies_keep_request_order_around_group_commits(server: ServerProcess) -> None:
    """Pipelined, on one connection: uploads committed in groups, an early refusal,
    an ABORT, a GET of a file still being committed, and a LIST. Every reply comes
    in its request's place, and the GET sees the committed file."""
    (server.root / "taken").write_bytes(b"old")
    peer = RawPeer(server.port)

    def upload(name: str, data: bytes, *, exclusive: bool = False) -> list[ev.Event]:
        put = ev.PutRequested(
            path=name, size=len(data), mtime_ns=-1, mode=0o644, exclusive=exclusive
        )
        return [put, ev.FileData(data=data), ev.FileEnded(digest=digest_bytes(data))]

    try:
        peer.send(
            ev.HelloOffered(min_version=4, max_version=4),
            *upload("a", b"first"),
            *upload("taken", b"new", exclusive=True),  # refused at PUT: ERROR 11
            *upload("b", b"second"),
            ev.PutRequested(path="c", size=5, mtime_ns=-1, mode=0o644, exclusive=False),
            ev.FileAborted(),
            *upload("d", b"third"),
            ev.GetRequested(path="d"),  # answered only once d is committed
            ev.ListRequested(path=""),
        )
        replies: list[str] = []
        got = b""
        while "ListEnded" not in replies:
            for event in peer.events():
                assert not isinstance(event, ev.ConnectionClosed), replies
                if isinstance(event, ev.FileData):
                    got += bytes(event.data)
                    continue
                name = type(event).__name__
                if isinstance(event, ev.Failed):
                    name += f" {event.code}"
                replies.append(name)
        assert replies == [
            "HelloAccepted",
            "PutCommitted",
            "Failed 11",
            "PutCommitted",
            "Failed 43",
            "PutCommitted",
            "FileStarted",
            "FileEnded",
            *[r for r in replies if r == "Listed"],
            "ListEnded",
        ]
        assert got == b"third"
        assert (server.root / "taken").read_bytes() == b"old"
        assert not (server.root / "c").exists()
    finally:
        peer.close()
