"""UDP mode through the real server, the real relay and the real CLI, on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, ServerProcess, run_cli, temporaries

from ftransfer.checksum import digest_bytes
from ftransfer.errors import ExitCode
from ftransfer.proto.udp import packets as pk
from ftransfer.proto.udp.sealed import SEALED_MAGIC


class RelayProcess:
    def __init__(self, target_port: int, *impairments: str) -> None:
        self.proc = subprocess.Popen(
            [
                *CLI,
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--to",
                f"127.0.0.1:{target_port}",
                *impairments,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"udp://127\.0\.0\.1:(\d+)", line)
        assert match, line
        self.port = int(match.group(1))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


@pytest.fixture
def relay_factory(server: ServerProcess) -> Iterator[list[RelayProcess]]:
    relays: list[RelayProcess] = []
    yield relays
    for relay in relays:
        assert relay.stop() == 0


def test_ready_line_names_udp(server: ServerProcess) -> None:
    assert f"udp://127.0.0.1:{server.port}" in server.ready_line


@pytest.mark.parametrize(
    "impairments",
    [
        (),
        ("--loss", "0.05", "--seed", "1"),
        (
            "--loss",
            "0.2",
            "--dup",
            "0.05",
            "--reorder",
            "0.05",
            "--corrupt",
            "0.02",
            "--delay",
            "5",
            "--jitter",
            "2",
            "--seed",
            "2",
        ),
    ],
    ids=["clean", "loss5", "everything"],
)
def test_put_and_get_through_the_relay_are_byte_exact(
    server: ServerProcess,
    relay_factory: list[RelayProcess],
    tmp_path: Path,
    impairments: tuple[str, ...],
) -> None:
    relay = RelayProcess(server.port, *impairments)
    relay_factory.append(relay)
    data = os.urandom(3 << 20)
    (tmp_path / "in.bin").write_bytes(data)
    remote = f"127.0.0.1:{relay.port}/via.bin"
    keys = ("--tcp-port", str(server.port))  # the relay carries UDP; TLS goes direct
    put = run_cli("put", "--udp", "--json", *keys, str(tmp_path / "in.bin"), remote)
    assert put.returncode == 0, put.stderr
    record = json.loads(put.stdout)
    assert record["digest"] == digest_bytes(data).hex()
    assert {
        "datagrams_sent",
        "retransmitted",
        "duplicates",
        "corrupt_dropped",
        "srtt_ms",
        "loss_estimate",
        "bytes_per_second",
        "acks_received",
        "chunk_bytes",
    } <= set(record)
    assert record["transport"] == "udp" and record["verified"] is True
    assert (server.root / "via.bin").read_bytes() == data
    got = run_cli("get", "--udp", *keys, remote, str(tmp_path / "out.bin"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    assert b"udp:" in got.stderr and b"datagrams received" in got.stderr  # the summary
    if impairments:  # the receiver's counts, from ~2,300 datagrams
        got = run_cli("get", "--udp", "--json", *keys, remote, str(tmp_path / "out2.bin"))
        assert got.returncode == 0, got.stderr
        stats = json.loads(got.stdout)
        if impairments[:2] == ("--loss", "0.05"):  # 0.05 +- 0.005
            assert 0.02 < stats["loss_estimate"] < 0.10
        if "--corrupt" in impairments:  # 2 %: ~46 expected, each fails its AEAD tag
            assert stats["rejected"] > 5 and stats["corrupt_dropped"] == 0
    assert temporaries(server.root) == [] and temporaries(tmp_path) == []


def test_udp_ls_stat_rm_and_refusals(server: ServerProcess, tmp_path: Path) -> None:
    (server.root / "a.txt").write_bytes(b"alpha")
    (server.root / "sub").mkdir()
    listing = run_cli("ls", "--udp", "--json", server.remote())
    assert sorted(json.loads(x)["name"] for x in listing.stdout.splitlines()) == ["a.txt", "sub"]
    stat = json.loads(run_cli("stat", "--udp", "--json", server.remote("a.txt")).stdout)
    assert stat["size"] == 5 and stat["digest"] == digest_bytes(b"alpha").hex()
    assert run_cli("get", "--udp", server.remote("missing")).returncode == ExitCode.NOT_FOUND
    assert run_cli("get", "--udp", server.remote("../x")).returncode == ExitCode.REFUSED
    assert run_cli("rm", "--udp", server.remote("a.txt")).returncode == 0
    assert not (server.root / "a.txt").exists()


def test_read_only_refuses_udp_uploads(served: Path, tmp_path: Path) -> None:
    srv = ServerProcess(served, "--read-only", log=tmp_path / "log")
    (tmp_path / "x").write_bytes(b"x")
    result = run_cli("put", "--udp", str(tmp_path / "x"), srv.remote())
    assert result.returncode == ExitCode.REFUSED and b"read-only" in result.stderr
    assert os.listdir(served) == []
    assert srv.stop() == 0


def test_a_dead_path_ends_in_a_timeout_and_nothing_committed(
    server: ServerProcess, relay_factory: list[RelayProcess], tmp_path: Path
) -> None:
    relay = RelayProcess(server.port, "--loss", "1.0")
    relay_factory.append(relay)
    (tmp_path / "x").write_bytes(os.urandom(100_000))
    result = run_cli(
        "put",
        "--udp",
        "--give-up",
        "1.5",
        "--tcp-port",
        str(server.port),
        str(tmp_path / "x"),
        f"127.0.0.1:{relay.port}/x",
    )
    assert result.returncode == ExitCode.TIMEOUT, result.stderr
    assert b"ftransfer: error:" in result.stderr
    assert not (server.root / "x").exists() and temporaries(server.root) == []


def test_ping_reports_rtt_and_loss(server: ServerProcess) -> None:
    result = run_cli("ping", "-c", "3", "-i", "0.01", server.remote())
    assert result.returncode == 0
    assert b"3 sent, 3 received, 0.0% loss" in result.stdout
    assert re.search(rb"rtt min/avg/max/jitter = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms", result.stdout)


def test_udp_get_to_stdout_streams_and_verifies(server: ServerProcess) -> None:
    data = os.urandom(2 << 20)
    (server.root / "s.bin").write_bytes(data)
    result = run_cli("get", "--udp", "-q", server.remote("s.bin"), "-")
    assert result.returncode == 0 and result.stdout == data


def test_ping_without_an_echo_reports_loss_and_exits_7() -> None:
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    result = run_cli("ping", "-c", "2", "-i", "0.01", "--timeout", "0.2", f"127.0.0.1:{port}")
    silent.close()
    assert result.returncode == ExitCode.TIMEOUT
    assert b"2 sent, 0 received, 100.0% loss" in result.stdout


def test_auto_takes_udp_on_a_long_path_and_says_why(
    server: ServerProcess, relay_factory: list[RelayProcess], tmp_path: Path
) -> None:
    relay = RelayProcess(server.port, "--delay", "10")  # 20 ms round trips at least
    relay_factory.append(relay)
    data = os.urandom(200_000)
    (tmp_path / "in.bin").write_bytes(data)
    keys = ("--tcp-port", str(server.port))  # the relay carries UDP; TLS goes direct
    remote = f"127.0.0.1:{relay.port}/auto.bin"
    put = run_cli("put", "--transport", "auto", "--json", *keys, str(tmp_path / "in.bin"), remote)
    assert put.returncode == 0, put.stderr
    record = json.loads(put.stdout)
    assert record["transport"] == "udp"
    assert record["transport_choice"]["transport"] == "udp"
    assert "a long path" in record["transport_choice"]["reason"]
    assert record["transport_choice"]["rtt_ms"] >= 20
    assert b"transport udp: rtt " in put.stderr
    assert (server.root / "auto.bin").read_bytes() == data


def test_auto_takes_tcp_on_a_short_clean_path(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "in.bin").write_bytes(b"x" * 1000)
    put = run_cli("put", "--transport", "auto", "--json", str(tmp_path / "in.bin"), server.remote())
    assert put.returncode == 0, put.stderr
    record = json.loads(put.stdout)
    choice = record["transport_choice"]
    # Loopback is short and clean; on a machine so busy that an echo came back
    # later than the probe waits (then counted lost), the rule says UDP: either
    # way the choice must follow the figures it reports.
    assert record["transport"] == choice["transport"]
    if choice["echoes_lost"] == 0 and choice["rtt_ms"] < 10:
        assert choice["transport"] == "tcp" and "short, clean path" in choice["reason"]
    else:
        assert choice["transport"] == "udp"
        assert "lossy" in choice["reason"] or "long" in choice["reason"]


def test_auto_falls_back_to_tcp_when_udp_is_not_there(served: Path, tmp_path: Path) -> None:
    """Over TLS the server refuses the probe's keys (no encrypted UDP); in
    plaintext the echoes go unanswered (port unreachable): TCP both times."""
    (tmp_path / "in.bin").write_bytes(b"y" * 1000)
    for extra, reason in (
        ((), "the server gives no UDP keys"),
        (("--insecure",), "UDP is blocked or filtered"),
    ):
        proc = ServerProcess(served, "--no-udp", *extra, log=tmp_path / "server.log")
        try:
            put = run_cli(
                "put",
                "--transport",
                "auto",
                "--json",
                *extra,
                str(tmp_path / "in.bin"),
                proc.remote(),
            )
            assert put.returncode == 0, put.stderr
            record = json.loads(put.stdout)
            assert record["transport"] == "tcp"
            assert reason in record["transport_choice"]["reason"]
        finally:
            assert proc.stop() == 0


def test_the_probe_is_sealed_so_a_forged_echo_does_not_count(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A responder that is not the server answers every datagram: a PONG built
    from a plaintext PING, else the datagram reflected. Over TLS the probe's
    PINGs are sealed, so nothing it sends back opens: every echo is lost, and the
    client takes TCP (to the real server, --tcp-port)."""
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger.bind(("127.0.0.1", 0))
    forger.settimeout(5)
    seen: list[bytes] = []

    def answer() -> None:
        try:
            while True:
                data, peer = forger.recvfrom(65536)
                seen.append(data)
                try:
                    _sid, body = pk.decode_untrusted(data)
                except pk.PacketError:
                    forger.sendto(data, peer)  # a reflection
                    continue
                if isinstance(body, pk.Ping):
                    pong = pk.Pong(seq=body.seq, timestamp_ns=body.timestamp_ns, padding=0)
                    forger.sendto(pk.encode(0, pong), peer)
        except OSError:
            return

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        (tmp_path / "in.bin").write_bytes(b"z" * 100)
        keys = ("--tcp-port", str(server.port))
        remote = f"127.0.0.1:{forger.getsockname()[1]}/sealed.bin"
        put = run_cli(
            "put", "--transport", "auto", "--json", *keys, str(tmp_path / "in.bin"), remote
        )
        assert put.returncode == 0, put.stderr
        record = json.loads(put.stdout)
        assert record["transport"] == "tcp" and record["transport_choice"]["echoes_lost"] == 10
        assert seen and all(data[0] == SEALED_MAGIC for data in seen)  # never a plain PING
    finally:
        forger.close()
        thread.join(timeout=10)
