"""Transfer logs end to end: the real server as a subprocess, the real CLI, and a
real syslog receiver (Debian's rsyslogd, tests/syslogd.py), over TCP, UDP and
TFTP; and a run that tries to get secrets into every log there is.

Nothing sleeps: the tests wait for the server's ready line, for the processes
to exit, and for rsyslog's file to hold what was sent (polled, with a deadline).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, RawPeer, ServerProcess, run_cli
from syslogd import Received, Rsyslog

from ftransfer.checksum import digest_bytes, hex_digest
from ftransfer.proto.tcp import events as ev
from ftransfer.server.users import load_users

TFTP_READY = re.compile(r"tftp://127\.0\.0\.1:(\d+)")
PASSWORD = "alice-SECRET-password-1"
WRONG = "mallory-SECRET-guess-2"


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    receiver = Rsyslog(tmp_path)
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def own_state(isolated_home: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own server key, to look for it in the logs."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def transfers(server: ServerProcess, tmp_path: Path, data: bytes) -> None:
    """A put over TCP, a get over UDP, a refused get and a listing."""
    local = tmp_path / "data.bin"
    local.write_bytes(data)
    put = run_cli("put", str(local), server.remote("data.bin"))
    assert put.returncode == 0, put.stderr
    got = run_cli("get", "--udp", server.remote("data.bin"), str(tmp_path / "back.bin"))
    assert got.returncode == 0, got.stderr
    assert run_cli("get", server.remote("missing"), str(tmp_path / "x")).returncode != 0
    assert run_cli("ls", server.remote()).returncode == 0


def test_json_on_stderr_is_one_record_per_request_of_every_transport(
    served: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(served, "--log-format", "json", "--tftp-port", "0", log=log)
    data = os.urandom(100_000)
    transfers(server, tmp_path, data)
    match = TFTP_READY.search(server.ready_line)
    assert match, server.ready_line
    tftp = run_cli("get", f"tftp://127.0.0.1:{match.group(1)}/data.bin", str(tmp_path / "t"))
    assert tftp.returncode == 0, tftp.stderr
    assert server.stop() == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every line
    records = [line for line in lines if "operation" in line]
    digest = hex_digest(digest_bytes(data))
    assert [(r["transport"], r["operation"], r["path"], r["result"]) for r in records] == [
        ("tcp", "stat", "data.bin", "refused"),  # (put's no-clobber check)
        ("tcp", "put", "data.bin", "ok"),
        ("udp", "get", "data.bin", "ok"),
        ("tcp", "get", "missing", "refused"),
        ("tcp", "ls", "/", "ok"),
        ("tftp", "get", "data.bin", "ok"),
    ]
    _stat, put, udp_get, refused, listing, tftp_get = records
    for done in (put, udp_get, tftp_get):
        assert done["bytes"] == len(data) and done["code"] is None and done["level"] == "info"
        assert done["seconds"] >= 0 and done["peer"].startswith("127.0.0.1:")
    assert put["digest"] == udp_get["digest"] == digest
    assert refused["code"] == 10 and "no such file" in refused["reason"].lower()
    assert listing["entries"] == 1
    others = [line for line in lines if "operation" not in line]
    assert others and all({"time", "level", "logger", "message"} <= set(o) for o in others)


def test_records_reach_rsyslog_as_rfc5424_over_udp_and_mmjsonparse_reads_them(
    served: Path, tmp_path: Path, rsyslog: Rsyslog
) -> None:
    target = f"127.0.0.1:{rsyslog.port}"
    args = ("--syslog", target, "--syslog-facility", "local3", "--log-format", "json")
    server = ServerProcess(served, *args, log=tmp_path / "server.log")
    data = os.urandom(50_000)
    transfers(server, tmp_path, data)
    pid = str(server.proc.pid)
    assert server.stop() == 0
    on_stderr = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()]
    got = rsyslog.records(len(on_stderr))
    assert {(m.facility, m.app_name, m.procid, m.hostname) for m in got} == {
        (19, "ftransfer", pid, socket.gethostname())
    }
    records = [m for m in got if m.msgid != "-"]
    assert [(m.msgid, m.severity, m.fields["result"]) for m in records] == [
        ("stat", 6, "refused"),
        ("put", 6, "ok"),
        ("get", 6, "ok"),
        ("get", 6, "refused"),
        ("ls", 6, "ok"),
    ]
    put = records[1].fields
    assert put["bytes"] == 50_000 and put["digest"] == hex_digest(digest_bytes(data))
    assert records[2].fields["transport"] == "udp" and records[3].fields["code"] == 10
    for received, logged in zip(records, [r for r in on_stderr if "operation" in r], strict=True):
        assert received.fields == {k: v for k, v in logged.items() if k != "level"}
        assert _instant(received) == datetime.datetime.fromisoformat(logged["time"])
    assert [m.fields["msg"] for m in got if m.msgid == "-"][-1] == "stopped"


def _instant(message: Received) -> datetime.datetime:
    return datetime.datetime.fromisoformat(message.timestamp)


def test_records_reach_rsyslog_on_its_local_socket_as_its_default_parser_expects(
    served: Path, tmp_path: Path, rsyslog: Rsyslog
) -> None:
    server = ServerProcess(served, "--syslog", f"unix:{rsyslog.socket}", log=tmp_path / "s.log")
    transfers(server, tmp_path, b"local socket")
    pid = str(server.proc.pid)
    assert server.stop() == 0
    count = len((tmp_path / "s.log").read_text().splitlines())
    got = rsyslog.records(count)
    assert {(m.facility, m.app_name, m.procid) for m in got} == {(3, "ftransfer", pid)}
    records = [m.fields for m in got if "operation" in m.fields]
    assert [(r["operation"], r["result"]) for r in records] == [
        ("stat", "refused"),
        ("put", "ok"),
        ("get", "ok"),
        ("get", "refused"),
        ("ls", "ok"),
    ]
    assert records[1]["digest"] == hex_digest(digest_bytes(b"local socket"))


def _add_user(users: Path, name: str, password: str) -> None:
    done = run_cli_input("user", "add", name, "--users", str(users), "--password-stdin", password)
    assert done.returncode == 0, done.stderr


def run_cli_input(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI with the last argument as its standard input."""
    *command, text = args
    return subprocess.run(
        [*CLI, *command], input=(text + "\n").encode(), capture_output=True, timeout=60, check=False
    )


def _ticket_secret(port: int) -> bytes:
    """Log in by hand and ask for a TICKET: the secret a log must never show."""
    peer = RawPeer(port)
    try:
        peer.send(ev.HelloOffered(min_version=4, max_version=4))
        peer.send(ev.LoginRequested(user="alice", password=PASSWORD))
        answers: list[object] = []
        while not any(isinstance(a, ev.Done) for a in answers):
            answers += peer.events()
        peer.send(ev.TicketRequested())
        while not any(isinstance(a, ev.TicketIssued) for a in answers):
            answers += peer.events()
        [issued] = [a for a in answers if isinstance(a, ev.TicketIssued)]
        return issued.secret
    finally:
        peer.close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_reaches_any_log(
    served: Path, tmp_path: Path, own_state: Path, rsyslog: Rsyslog, log_format: str
) -> None:
    """Passwords right and wrong, the users file's hash, a ticket's secret and the
    server's private key: written nowhere, at debug level, in any format."""
    users = tmp_path / "users"
    (served / "alice").mkdir()
    _add_user(users, "alice", PASSWORD)
    args = ["--users", str(users), "--log-level", "debug", "--log-format", log_format]
    args += ["--syslog", f"127.0.0.1:{rsyslog.port}"]
    log = tmp_path / "server.log"
    server = ServerProcess(served, *args, log=log)
    env = {**os.environ, "FTRANSFER_PASSWORD": PASSWORD}
    local = tmp_path / "f.txt"
    local.write_bytes(b"content")

    def as_alice(*cli: str, password: str = PASSWORD) -> int:
        env["FTRANSFER_PASSWORD"] = password
        done = subprocess.run([*CLI, *cli], capture_output=True, env=env, timeout=60, check=False)
        return done.returncode

    url = f"alice@127.0.0.1:{server.port}"
    assert as_alice("put", str(local), f"{url}/f.txt") == 0
    assert as_alice("get", "--udp", f"{url}/f.txt", str(tmp_path / "back.txt")) == 0  # a TICKET
    assert as_alice("ls", f"{url}/", password=WRONG) != 0
    secret = _ticket_secret(server.port)
    assert server.stop() == 0
    rsyslog.records(len(log.read_text().splitlines()))
    written = log.read_text() + rsyslog.out.read_text()
    assert "login" in written and "ticket" in written and "refused" in written
    [user] = load_users(str(users)).values()
    keys = [p.read_text() for p in own_state.rglob("*") if p.is_file() and "PRIVATE" in _text(p)]
    assert keys, "no private key found to look for"
    forbidden = [PASSWORD, WRONG, user.password_hash, user.password_hash.split("$")[-1]]
    forbidden += [secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]]
    forbidden += [line for key in keys for line in key.splitlines() if "-----" not in line]
    for text in forbidden:
        assert text not in written, text


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return ""
