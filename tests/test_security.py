"""TLS and users on the real server and the real CLI (issue: encrypted and
authenticated by default): who may log in, what each user may touch, how a client
decides to trust a server, and what an observer of the wire learns.

Every test here fails without the guard it names: a server that answered an
unknown user differently, a client that trusted a changed key, a relay that could
read the stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, RawPeer, ServerProcess, known_hosts, run_cli, trust

from ftransfer.errors import ExitCode
from ftransfer.io.tls import ensure_identity, fingerprint_of_file
from ftransfer.proto.tcp import events as ev

ALICE_PASSWORD = "alice-secret-1"
BOB_PASSWORD = "bob-secret-22"
PATTERN = b"KNOWN-PLAINTEXT-PATTERN-0123456789"


def _add_user(users: Path, name: str, password: str, *options: str) -> None:
    done = subprocess.run(
        [*CLI, "user", "add", name, "--users", str(users), "--password-stdin", *options],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _as(password: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI with ``password`` in FTRANSFER_PASSWORD."""
    env = {**os.environ, "FTRANSFER_PASSWORD": password}
    return subprocess.run([*CLI, *args], capture_output=True, env=env, timeout=120, check=False)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    """alice (read, write, delete in alice/), bob (read and write in bob/, no
    delete), carol (read-only, all of the served root)."""
    path = tmp_path / "users"
    _add_user(path, "alice", ALICE_PASSWORD)
    _add_user(path, "bob", BOB_PASSWORD, "--permissions", "rw")
    _add_user(path, "carol", "carol-secret-3", "--root", "/", "--read-only")
    return path


@pytest.fixture
def login_server(served: Path, users: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        served, "--users", str(users), "--log-level", "debug", log=tmp_path / "server.log"
    )
    yield proc
    assert proc.stop() == 0


def _url(server: ServerProcess, user: str, path: str = "") -> str:
    return f"{user}@127.0.0.1:{server.port}/{path}"


# ---- logging in ----------------------------------------------------------------------


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(
    login_server: ServerProcess,
) -> None:
    wrong = _as("not-her-password", "ls", _url(login_server, "alice"))
    unknown = _as("not-her-password", "ls", _url(login_server, "mallory"))
    assert wrong.returncode == unknown.returncode == ExitCode.AUTHENTICATION
    assert wrong.stderr == unknown.stderr.replace(b"mallory", b"alice")
    assert b"wrong user name or password" in wrong.stderr
    right = _as(ALICE_PASSWORD, "ls", _url(login_server, "alice"))
    assert right.returncode == 0, right.stderr


def test_a_login_is_required_and_its_absence_is_explained(login_server: ServerProcess) -> None:
    anonymous = run_cli("ls", login_server.remote())
    assert anonymous.returncode == ExitCode.AUTHENTICATION
    assert b"log in" in anonymous.stderr or b"login" in anonymous.stderr


def _login(port: int, user: str, password: str, source: str) -> ev.Event | ev.ConnectionClosed:
    peer = RawPeer(port, source=source)
    peer.send(ev.HelloOffered(min_version=4, max_version=4))
    peer.send(ev.LoginRequested(user=user, password=password))
    events: list[ev.Event | ev.ConnectionClosed] = []
    while not events:
        events = [e for e in peer.events() if not isinstance(e, ev.HelloAccepted)]
    peer.sock.close()
    return events[0]


def test_failed_logins_lock_out_their_address_and_no_other(login_server: ServerProcess) -> None:
    port = login_server.port
    guesses = [
        threading.Thread(target=_login, args=(port, "alice", f"guess-{n}", "127.0.0.2"))
        for n in range(5)
    ]
    for thread in guesses:
        thread.start()
    for thread in guesses:
        thread.join()
    locked = _login(port, "alice", ALICE_PASSWORD, "127.0.0.2")  # the right password
    assert isinstance(locked, ev.Failed) and locked.code == 44, locked
    assert "too many failed logins" in locked.message
    elsewhere = _login(port, "alice", ALICE_PASSWORD, "127.0.0.3")
    assert isinstance(elsewhere, ev.Done), elsewhere
    log = (login_server.root.parent / "server.log").read_text()
    assert "127.0.0.2" in log  # failures are logged with the address


# ---- what each user may touch -----------------------------------------------------------


def test_a_user_never_sees_or_touches_another_users_root(
    login_server: ServerProcess, tmp_path: Path
) -> None:
    mine = tmp_path / "a.txt"
    mine.write_bytes(b"alice's")
    assert _as(ALICE_PASSWORD, "put", str(mine), _url(login_server, "alice")).returncode == 0
    assert (login_server.root / "alice" / "a.txt").read_bytes() == b"alice's"
    theirs = tmp_path / "b.txt"
    theirs.write_bytes(b"bob's")
    for remote in ("../alice/a.txt", "/../alice/a.txt", "alice/a.txt"):
        got = _as(BOB_PASSWORD, "get", _url(login_server, "bob", remote), str(tmp_path / "x"))
        assert got.returncode != 0 and not (tmp_path / "x").exists(), remote
        put = _as(BOB_PASSWORD, "put", str(theirs), _url(login_server, "bob", remote))
        assert put.returncode != 0, remote
    listing = _as(BOB_PASSWORD, "ls", _url(login_server, "bob"))
    assert listing.returncode == 0 and b"a.txt" not in listing.stdout
    assert (login_server.root / "alice" / "a.txt").read_bytes() == b"alice's"
    assert not (login_server.root / "bob" / "a.txt").exists()


def test_permissions_are_enforced_per_user(login_server: ServerProcess, tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    local.write_bytes(b"data")
    assert _as(BOB_PASSWORD, "put", str(local), _url(login_server, "bob")).returncode == 0
    refused = _as(BOB_PASSWORD, "rm", _url(login_server, "bob", "f.txt"))  # no delete
    assert refused.returncode == ExitCode.REFUSED and b"bob may not" in refused.stderr
    assert (login_server.root / "bob" / "f.txt").exists()
    carol = "carol-secret-3"  # read-only, over the whole root
    read = _as(carol, "get", _url(login_server, "carol", "bob/f.txt"), str(tmp_path / "g"))
    assert read.returncode == 0 and (tmp_path / "g").read_bytes() == b"data"
    write = _as(carol, "put", str(local), _url(login_server, "carol", "bob/f.txt"))
    assert write.returncode == ExitCode.REFUSED and b"carol may not" in write.stderr
    assert _as(carol, "rm", _url(login_server, "carol", "bob/f.txt")).returncode != 0
    assert (login_server.root / "bob" / "f.txt").read_bytes() == b"data"


def test_secrets_never_reach_logs_errors_or_json(
    login_server: ServerProcess, users: Path, tmp_path: Path
) -> None:
    local = tmp_path / "f.txt"
    local.write_bytes(b"x")
    outputs = [
        _as(ALICE_PASSWORD, "put", "--json", str(local), _url(login_server, "alice")),
        _as(ALICE_PASSWORD, "ls", "--json", _url(login_server, "alice")),
        _as(BOB_PASSWORD + "x", "ls", "--json", _url(login_server, "bob")),
        _as(ALICE_PASSWORD, "get", "--json", _url(login_server, "alice", "missing")),
    ]
    assert outputs[0].stdout and outputs[1].stdout
    for line in (outputs[0].stdout + outputs[1].stdout).splitlines():
        json.loads(line)  # the JSON is real
    hashes = [line.split(":")[1] for line in users.read_text().splitlines() if ":" in line]
    secrets = [ALICE_PASSWORD, BOB_PASSWORD, *hashes]
    login_server.stop()
    seen = b"".join(o.stdout + o.stderr for o in outputs)
    seen += (login_server.root.parent / "server.log").read_bytes()
    assert b"alice" in seen and b"authentication failed" in seen  # there was something
    for secret in secrets:
        assert secret.encode() not in seen


# ---- trusting the server ---------------------------------------------------------------


def _other_fingerprint(tmp_path: Path) -> str:
    cert, _key, _created = ensure_identity(str(tmp_path / "other-state"))
    return fingerprint_of_file(cert)


def test_a_server_whose_key_changed_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    old = _other_fingerprint(tmp_path)
    known_hosts().write_text(f"127.0.0.1:{server.port} {old}\n")
    refused = run_cli("ls", server.remote())
    assert refused.returncode == ExitCode.HOST_KEY
    message = refused.stderr.decode()
    assert old in message and server.fingerprint in message
    assert str(known_hosts()) in message  # which file, and which line to remove
    assert known_hosts().read_text() == f"127.0.0.1:{server.port} {old}\n"


def test_an_unknown_server_is_recorded_with_a_notice_or_refused_when_strict(
    server: ServerProcess,
) -> None:
    known_hosts().unlink()
    strict = run_cli("ls", "--strict-host-keys", server.remote())
    assert strict.returncode == ExitCode.HOST_KEY and not known_hosts().exists()
    first = run_cli("ls", server.remote())
    assert first.returncode == 0
    assert server.fingerprint.encode() in first.stderr and b"new server" in first.stderr
    assert server.fingerprint in known_hosts().read_text()
    second = run_cli("ls", server.remote())
    assert second.returncode == 0 and second.stderr == b""


def test_a_pinned_fingerprint_is_checked(server: ServerProcess, tmp_path: Path) -> None:
    known_hosts().unlink()
    wrong = run_cli("ls", "--fingerprint", _other_fingerprint(tmp_path), server.remote())
    assert wrong.returncode == ExitCode.HOST_KEY
    right = run_cli("ls", "--fingerprint", server.fingerprint, server.remote())
    assert right.returncode == 0, right.stderr


def test_a_client_refuses_a_plaintext_server_unless_insecure(served: Path, tmp_path: Path) -> None:
    (served / "f").write_bytes(b"plain")
    plain = ServerProcess(served, "--insecure", "--no-udp", log=tmp_path / "log")
    try:
        refused = run_cli("get", plain.remote("f"), str(tmp_path / "g"))
        insecure = run_cli("get", "--insecure", plain.remote("f"), str(tmp_path / "h"))
    finally:
        assert plain.stop() == 0
    assert refused.returncode == ExitCode.CONNECTION and b"TLS" in refused.stderr
    assert not (tmp_path / "g").exists()
    assert insecure.returncode == 0 and (tmp_path / "h").read_bytes() == b"plain"


class _Relay:
    """A TCP relay between a client and ``port``: forwards both directions and keeps
    what went through (a wiretap), or, with ``context``, ends TLS itself with its
    own certificate (a man in the middle) and keeps what it decrypted."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        self.target, self.context = port, context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.context is not None:
                self._intercept(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            pumps = [
                threading.Thread(target=self._pump, args=(client, upstream)),
                threading.Thread(target=self._pump, args=(upstream, client)),
            ]
            for pump in pumps:
                pump.start()
            for pump in pumps:
                pump.join()
            client.close()
            upstream.close()

    def _intercept(self, client: socket.socket) -> None:
        assert self.context is not None
        try:
            with self.context.wrap_socket(client, server_side=True) as tls:
                while data := tls.recv(65536):
                    with self._lock:
                        self.seen += data
        except OSError:
            pass

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_a_man_in_the_middle_learns_nothing(login_server: ServerProcess, tmp_path: Path) -> None:
    cert, key, _created = ensure_identity(str(tmp_path / "mitm-state"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    relay = _Relay(login_server.port, context)
    trust(relay.port, login_server.fingerprint)  # the client knows the real server
    local = tmp_path / "f.bin"
    local.write_bytes(PATTERN * 100)
    try:
        done = _as(ALICE_PASSWORD, "put", str(local), f"alice@127.0.0.1:{relay.port}/")
    finally:
        relay.close()
    assert done.returncode == ExitCode.HOST_KEY, done.stderr
    assert fingerprint_of_file(cert).encode() in done.stderr
    assert bytes(relay.seen) == b""  # not a HELLO, not the password, not a byte
    assert not (login_server.root / "alice" / "f.bin").exists()


@pytest.mark.parametrize("insecure", [False, True])
def test_a_wiretap_sees_no_file_and_no_password(
    served: Path, tmp_path: Path, insecure: bool
) -> None:
    """The same transfers with --insecure on both sides are the control: there the
    wiretap does see the pattern (so the capture works)."""
    users = tmp_path / "users"
    _add_user(users, "alice", ALICE_PASSWORD)
    extra = ["--insecure"] if insecure else []
    server = ServerProcess(served, "--users", str(users), *extra, log=tmp_path / "log")
    relay = _Relay(server.port)
    trust(relay.port, server.fingerprint)
    local = tmp_path / "f.bin"
    local.write_bytes(PATTERN * 1000)
    try:
        url = f"alice@127.0.0.1:{relay.port}/"
        put = _as(ALICE_PASSWORD, "put", *extra, str(local), url)
        get = _as(ALICE_PASSWORD, "get", *extra, url + "f.bin", str(tmp_path / "back"))
    finally:
        relay.close()
        assert server.stop() == 0
    assert put.returncode == get.returncode == 0, put.stderr + get.stderr
    assert (tmp_path / "back").read_bytes() == local.read_bytes()
    seen = bytes(relay.seen)
    assert len(seen) > len(local.read_bytes())  # the file went through the relay twice
    assert (PATTERN in seen) is insecure
    assert (ALICE_PASSWORD.encode() in seen) is insecure


# ---- sealed UDP, through the real server and CLI --------------------------------


@pytest.mark.parametrize("flag", [["--udp"], []], ids=["--udp", "udp-url"])
def test_udp_requests_speak_for_the_logged_in_user(
    login_server: ServerProcess, tmp_path: Path, flag: list[str]
) -> None:
    local = tmp_path / "u.bin"
    local.write_bytes(PATTERN * 3000)
    scheme = "" if flag else "udp://"
    url = scheme + _url(login_server, "alice", "u.bin")
    put = _as(ALICE_PASSWORD, "put", *flag, "--json", str(local), url)
    assert put.returncode == 0, put.stderr
    record = json.loads(put.stdout)
    assert record["transport"] == "udp" and record["sealed"] is True
    assert (login_server.root / "alice" / "u.bin").read_bytes() == local.read_bytes()
    got = _as(ALICE_PASSWORD, "get", *flag, url, str(tmp_path / "back.bin"))
    assert got.returncode == 0 and (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    carol = _as(
        "carol-secret-3",
        "put",
        *flag,
        str(local),
        f"{scheme}carol@127.0.0.1:{login_server.port}/alice/c.bin",
    )  # read-only over UDP too
    assert carol.returncode == ExitCode.REFUSED and b"carol may not" in carol.stderr
    wrong = _as("wrong-password", "get", *flag, url, str(tmp_path / "no.bin"))
    assert wrong.returncode == ExitCode.AUTHENTICATION and not (tmp_path / "no.bin").exists()


def test_a_plaintext_udp_client_is_refused_by_a_tls_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    (server.root / "f").write_bytes(b"x")
    got = run_cli("get", "--udp", "--insecure", server.remote("f"), str(tmp_path / "f"))
    assert got.returncode == ExitCode.CONNECTION
    assert b"this server encrypts UDP" in got.stderr and not (tmp_path / "f").exists()


class _UdpTap:
    """A UDP relay in a thread that keeps a copy of every datagram, both ways."""

    def __init__(self, server_port: int) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(("127.0.0.1", server_port))
        self.port = self.front.getsockname()[1]
        self.seen: list[bytes] = []
        self._client: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.front, selectors.EVENT_READ)
            sel.register(self.back, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _mask in sel.select(timeout=0.05):
                    if key.fileobj is self.front:
                        data, self._client = self.front.recvfrom(65536)
                        self.seen.append(data)
                        self.back.send(data)
                    else:
                        with contextlib.suppress(ConnectionRefusedError):
                            data = self.back.recv(65536)
                            self.seen.append(data)
                            if self._client is not None:
                                self.front.sendto(data, self._client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.front.close()
        self.back.close()


@pytest.mark.parametrize("insecure", [False, True], ids=["sealed", "insecure-control"])
def test_a_udp_wiretap_sees_no_file_and_no_name(
    served: Path, tmp_path: Path, insecure: bool
) -> None:
    """Every datagram both ways is recorded: sealed, neither the file's pattern
    nor its name appears; with --insecure on both sides (the control) both do."""
    local = tmp_path / "secret-name.bin"
    local.write_bytes(PATTERN * 2000)
    extra = ("--insecure",) if insecure else ()
    server = ServerProcess(served, *extra, log=tmp_path / "server.log")
    tap = _UdpTap(server.port)
    try:
        keys = () if insecure else ("--tcp-port", str(server.port))
        put = run_cli(
            "put", "--udp", *extra, *keys, str(local), f"127.0.0.1:{tap.port}/secret-name.bin"
        )
        assert put.returncode == 0, put.stderr
    finally:
        tap.close()
        assert server.stop() == 0
    assert (served / "secret-name.bin").read_bytes() == local.read_bytes()
    seen = b"".join(tap.seen)
    assert len(seen) > len(local.read_bytes())  # the whole upload went through it
    leaked = PATTERN in seen or b"secret-name" in seen
    assert leaked is insecure


def test_verbose_traces_the_session_and_never_a_secret(
    login_server: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    for via in ([], ["--udp"]):
        done = _as(
            ALICE_PASSWORD, "put", "-v", *via, str(tmp_path / "a.txt"), _url(login_server, "alice")
        )
        assert done.returncode == 0, done.stderr
        trace = done.stderr.decode()
        assert "tcp: connected to 127.0.0.1:" in trace and "tls: TLSv1.3 " in trace
        assert f"server {login_server.fingerprint}, trusted by known_hosts" in trace
        assert "tcp: -> LoginRequested user alice" in trace
        assert ("udp: -> PUT a.txt" if via else "tcp: -> PutRequested path a.txt") in trace
        assert ALICE_PASSWORD not in trace
        if via:  # the ticket's id, never its secret
            assert "TicketIssued 0x" in trace and "sealed, ticket 0x" in trace
            assert "udp: <- completed" in trace
