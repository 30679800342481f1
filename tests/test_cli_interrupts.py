"""Interrupted clients (issue 10, items 8 and 9), through the real CLI.

SIGTERM and SIGINT in the middle of a download leave no temporary file and exit
143 and 130; after a ``kill -9`` the next download into that directory removes the
temporary of the dead client and never that of a live one; an interrupted UDP
transfer tells the server (CLOSE: the server logs "interrupted by the client"), and
an interrupted TFTP download stops at once, commits nothing and sends ERROR.

A transfer is held mid-flight without sleeps: a stand-in server (a thread here)
sends a file's header and its first bytes and then nothing more, or the real
server's datagrams cross the real relay throttled to 1 MB/s, far slower than the
file's size needs. The tests wait, with a deadline, for the temporary file to
appear (or the first block to be acknowledged), then send the signal.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, DEADLINE_S, ServerProcess, run_cli, temporaries, wait_until
from test_udp_integration import RelayProcess

from ftransfer.client.udp import tell_server
from ftransfer.config import MAX_FRAME_BYTES, TEMP_PREFIX
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role
from ftransfer.proto.tftp.packets import Ack, Error, encode_data, parse_untrusted

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
SIGNALS = [
    pytest.param(signal.SIGTERM, EXIT_TERMINATED, id="SIGTERM"),
    pytest.param(signal.SIGINT, EXIT_INTERRUPTED, id="SIGINT"),
]


@pytest.fixture(autouse=True)
def sigint_reaches_the_children() -> Iterator[None]:
    """A shell starts background jobs (``pytest &``, nohup) with SIGINT ignored, and
    exec keeps an ignored signal, so the CLI would (rightly) keep ignoring Ctrl-C
    and the SIGINT cases fail. exec resets a handler to the default instead: hold
    one here while the children start."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def start_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def stop(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, bytes]:
    """Send ``sig``; the exit status and what the client wrote on stderr."""
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, err


def written(paths: list[str]) -> int:
    """Bytes in these files (0 for one that is gone)."""
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            continue
    return total


def owner_pid(temporary: str) -> int:
    """The pid a temporary's name records (storage/atomic.py: machine+boot, pid, ...)."""
    return int(os.path.basename(temporary).removeprefix(TEMP_PREFIX).split("-")[1])


class StalledServer:
    """A TCP stand-in for ftransfer: answers HELLO and a GET with the header of a
    1 GiB file and its first 64 KiB, then sends nothing more, so the client stays
    mid-download until it is stopped."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        """(A plaintext server: its clients run with --insecure.)"""
        return f"127.0.0.1:{self.port}/{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _address = self.listener.accept()
            except OSError:
                return  # closed
            self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        core = Connection(Role.SERVER)
        try:
            asked = False
            while not asked:
                data = conn.recv(65536)
                if not data:
                    return
                core.receive_data(data)
                while not isinstance(event := core.next_event(), ev.NeedData):
                    asked = asked or isinstance(event, ev.GetRequested)
            hello = ev.HelloAccepted(version=4, max_frame_bytes=MAX_FRAME_BYTES, read_only=False)
            header = ev.FileStarted(size=1 << 30, mtime_ns=-1, mode=0o644)
            conn.sendall(
                core.send(hello) + core.send(header) + core.send(ev.FileData(data=bytes(65536)))
            )
            while conn.recv(65536):  # until the client goes away
                pass
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@pytest.fixture
def stalled() -> Iterator[StalledServer]:
    server = StalledServer()
    yield server
    server.close()


# ---- TCP downloads: signals and kill -9 ---------------------------------------------


@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_a_signal_mid_download_removes_the_temporary(
    stalled: StalledServer, tmp_path: Path, sig: int, code: int
) -> None:
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    proc = start_cli("get", "--insecure", "--no-resume", stalled.url("big.bin"), str(target))
    wait_until(lambda: temporaries(tmp_path) != [], "the download's temporary file")
    returncode, err = stop(proc, sig)
    assert returncode == code, err
    assert b"Traceback" not in err
    assert temporaries(tmp_path) == []
    assert target.read_bytes() == b"old"  # the final name keeps its complete old content


@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_a_signal_mid_download_keeps_the_partial_for_a_resume(
    stalled: StalledServer, tmp_path: Path, sig: int, code: int
) -> None:
    """With resume (the default), the partial and its journal stay for the next
    run; the final name is untouched, as without."""
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    proc = start_cli("get", "--insecure", stalled.url("big.bin"), str(target))
    wait_until(lambda: list(tmp_path.glob(".ftransfer-part-*.j")) != [], "the partial's journal")
    returncode, err = stop(proc, sig)
    assert returncode == code, err
    assert b"Traceback" not in err
    assert len(list(tmp_path.glob(".ftransfer-part-*"))) == 2  # the partial and its journal
    assert temporaries(tmp_path) == []
    assert target.read_bytes() == b"old"


def test_after_kill_9_the_next_run_removes_only_dead_clients_temporaries(
    server: ServerProcess, stalled: StalledServer, tmp_path: Path
) -> None:
    (server.root / "small").write_bytes(b"fresh")
    down = tmp_path / "down"
    down.mkdir()
    killed = start_cli("get", "--insecure", "--no-resume", stalled.url("a.bin"), cwd=down)
    alive = start_cli("get", "--insecure", "--no-resume", stalled.url("b.bin"), cwd=down)
    wait_until(lambda: len(temporaries(down)) == 2, "both downloads' temporary files")
    killed.kill()  # SIGKILL: no chance to clean up
    killed.communicate(timeout=DEADLINE_S)
    assert sorted(owner_pid(t) for t in temporaries(down)) == sorted([killed.pid, alive.pid])

    result = run_cli("get", server.remote("small"), cwd=down)  # the next run, same directory
    assert result.returncode == 0, result.stderr
    assert (down / "small").read_bytes() == b"fresh"
    assert [owner_pid(t) for t in temporaries(down)] == [alive.pid]  # the live one stays

    returncode, err = stop(alive, signal.SIGTERM)
    assert returncode == EXIT_TERMINATED, err
    assert temporaries(down) == []


# ---- UDP: the server is told ----------------------------------------------------------


def read_log_until(srv: ServerProcess, text: str) -> str:
    """The first line of the server's (piped) log that holds ``text``; fails after
    DEADLINE_S (the server's give-up time is far longer, so only the client's CLOSE
    can end the session within it)."""
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in srv.log:
            if text in line:
                found.put(line)
                return

    threading.Thread(target=read, daemon=True).start()
    try:
        return found.get(timeout=DEADLINE_S)
    except queue.Empty:
        raise AssertionError(f"the server never logged {text!r}") from None


@pytest.mark.parametrize("direction", ["get", "put"])
@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_an_interrupted_udp_transfer_tells_the_server(
    served: Path, tmp_path: Path, direction: str, sig: int, code: int
) -> None:
    size = 20_000_000  # 20 s at the relay's 1 MB/s
    (served / "big.bin").write_bytes(bytes(size))
    (tmp_path / "up.bin").write_bytes(bytes(size))
    down = tmp_path / "down"
    down.mkdir()
    srv = ServerProcess(served, "--udp-give-up", "600", log=tmp_path / "log", pipe_log=True)
    relay = RelayProcess(srv.port, "--rate", "8")
    try:
        remote = f"udp://127.0.0.1:{relay.port}/"
        keys = ("--tcp-port", str(srv.port))  # the relay carries UDP, TLS goes direct
        if direction == "get":
            proc = start_cli(
                "get", "-q", "--no-resume", *keys, remote + "big.bin", str(down / "big.bin")
            )
            wait_until(lambda: temporaries(down) != [], "the download's temporary file")
        else:
            proc = start_cli(
                "put", "-q", "--no-resume", *keys, str(tmp_path / "up.bin"), remote + "new.bin"
            )
            # Data in the server's temporary: the client has had the ACCEPT and knows
            # the session (before that it has no session to CLOSE; see the report).
            wait_until(lambda: written(temporaries(served)) > 0, "data in the upload")
        returncode, err = stop(proc, sig)
        assert returncode == code, err
        line = read_log_until(srv, "interrupted by the client")
        assert f"udp {direction}" in line
        assert temporaries(down) == [] and not (down / "big.bin").exists()
        wait_until(lambda: temporaries(served) == [], "the server to drop the upload")
        assert not (served / "new.bin").exists()
    finally:
        assert relay.stop() == 0
        assert srv.stop() == 0


def test_an_abandoned_udp_request_sends_its_close_three_times() -> None:
    """The copies that get a CLOSE past loss (client/udp.py, CLOSE_REPEATS_AFTER_S)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        server.settimeout(DEADLINE_S)
        client.connect(server.getsockname())
        queue_once = [[(b"CLOSE", server.getsockname())]]
        tell_server(client, lambda now: queue_once.pop() if queue_once else [])
        assert [server.recv(100) for _ in range(3)] == [b"CLOSE"] * 3
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.recv(100)  # no more than three
        tell_server(client, lambda now: [])  # no session: nothing to say, at once
        with pytest.raises(BlockingIOError):
            server.recv(100)


# ---- TFTP: one Ctrl-C aborts at once -------------------------------------------------


class StalledTftpServer:
    """A TFTP stand-in: answers a read request with block 1 (512 bytes, no options:
    plain RFC 1350) from a port of its own, takes its ACK, then sends nothing more.
    Records what the client sends after that ACK."""

    def __init__(self) -> None:
        self.listener = self._socket()
        self.transfer = self._socket()
        self.port = int(self.listener.getsockname()[1])
        self.acked = threading.Event()
        self.told: queue.Queue[Error] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(DEADLINE_S)
        return sock

    def _run(self) -> None:
        try:
            _request, client = self.listener.recvfrom(70000)
            self.transfer.sendto(encode_data(1, bytes(512)), client)
            while True:
                packet = parse_untrusted(self.transfer.recv(70000))
                if isinstance(packet, Ack) and packet.block == 1:
                    self.acked.set()  # (repeated ACKs of block 1 are the client waiting)
                elif isinstance(packet, Error):
                    self.told.put(packet)
                    return
        except OSError:
            return  # the deadline, or closed

    def close(self) -> None:
        self.listener.close()
        self.transfer.close()


@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_one_signal_aborts_a_tftp_download_at_once(tmp_path: Path, sig: int, code: int) -> None:
    tftp = StalledTftpServer()
    target = tmp_path / "image.bin"
    target.write_bytes(b"old")
    try:
        # A give-up of 600 s: a client that missed the signal, or noticed it only
        # when the transfer gave up, outlives stop()'s DEADLINE_S and fails the
        # test; the exit status then says the signal ended it.
        url = f"tftp://127.0.0.1:{tftp.port}/image.bin"
        proc = start_cli("get", "--give-up", "600", "--timeout", "600", url, str(target))
        assert tftp.acked.wait(DEADLINE_S), "the client never acknowledged block 1"
        returncode, err = stop(proc, sig)
        assert returncode == code, err
        assert target.read_bytes() == b"old" and temporaries(tmp_path) == []
        told = tftp.told.get(timeout=DEADLINE_S)  # the server is told, once
        assert "interrupted" in told.message
    finally:
        tftp.close()
