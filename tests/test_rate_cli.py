"""Rate limits through the real CLI and the real server. Only lower bounds on time
are asserted (a limited transfer cannot be faster than its limit; a busy machine
only makes it slower): the rates themselves are checked on virtual time in
test_ratelimit.py and measured by benchmarks/bench_rate.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ServerProcess, run_cli

from ftransfer.errors import ExitCode

SIZE = 600_000
RATE = "400K"  # 409,600 B/s: 600 kB take at least 1.2 s


def least_seconds() -> float:
    """The bucket's credit (1/20 s) may go at once, and one write or burst of
    datagrams before it is charged (64 KiB at most): the rest is at the rate."""
    rate = 400 * 1024
    return (SIZE - rate * 0.05 - 64 * 1024) / rate


def transfer_seconds(out: bytes) -> float:
    [record] = [json.loads(line) for line in out.splitlines()]
    return float(record["seconds"])


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_clients_limit_slows_put_and_get(
    server: ServerProcess, tmp_path: Path, transport: str
) -> None:
    data = os.urandom(SIZE)
    (tmp_path / "a.bin").write_bytes(data)
    via = ["--udp"] if transport == "udp" else []
    put = run_cli(
        "put", "--json", *via, "--limit-rate", RATE, str(tmp_path / "a.bin"), server.remote("a.bin")
    )
    assert put.returncode == 0, put.stderr
    assert transfer_seconds(put.stdout) >= least_seconds()
    got = run_cli(
        "get", "--json", *via, "--limit-rate", RATE, server.remote("a.bin"), str(tmp_path / "b.bin")
    )
    assert got.returncode == 0, got.stderr
    assert transfer_seconds(got.stdout) >= least_seconds()
    assert (tmp_path / "b.bin").read_bytes() == data


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_servers_limit_slows_every_client(served: Path, tmp_path: Path, transport: str) -> None:
    data = os.urandom(SIZE)
    (served / "a.bin").write_bytes(data)
    proc = ServerProcess(served, "--max-rate", RATE, log=tmp_path / "server.log")
    try:
        via = ["--udp"] if transport == "udp" else []
        got = run_cli("get", "--json", *via, proc.remote("a.bin"), str(tmp_path / "b.bin"))
        assert got.returncode == 0, got.stderr
        assert transfer_seconds(got.stdout) >= least_seconds()
        assert (tmp_path / "b.bin").read_bytes() == data
        put = run_cli("put", "--json", *via, str(tmp_path / "b.bin"), proc.remote("c.bin"))
        assert put.returncode == 0, put.stderr
        assert transfer_seconds(put.stdout) >= least_seconds()
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("bad", ["0", "-5M", "fast"])
def test_a_rate_must_be_a_positive_size(server: ServerProcess, tmp_path: Path, bad: str) -> None:
    got = run_cli("get", "--limit-rate", bad, server.remote("x"), str(tmp_path / "x"))
    assert got.returncode == ExitCode.USAGE and b"--limit-rate" in got.stderr


def test_a_low_limit_keeps_frames_short_so_the_peer_does_not_time_out(
    served: Path, tmp_path: Path
) -> None:
    """1.2 MB at 256K/s: sent as one frame, the client would wait 4.7 s for it and
    give up after its 3 s --timeout; under a limit frames hold 1/4 s of the rate."""
    data = os.urandom(1_200_000)
    (served / "a.bin").write_bytes(data)
    proc = ServerProcess(served, "--max-rate", "256K", log=tmp_path / "server.log")
    try:
        got = run_cli("get", "--timeout", "3", "-q", proc.remote("a.bin"), str(tmp_path / "b.bin"))
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "b.bin").read_bytes() == data
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("way", ["put", "get"])
def test_one_limit_covers_every_small_file_of_a_udp_command(
    server: ServerProcess, tmp_path: Path, way: str
) -> None:
    """Each UDP request is a session of its own; the limit is the command's: 30
    files of 4 KB at 40K/s take at least 2.5 s (a bucket per file would let each
    go at once: its first 4 KiB of credit covers it)."""
    import time

    names = [f"f{i:02d}" for i in range(30)]
    local = tmp_path / "here"
    local.mkdir()
    for name in names:
        (local if way == "put" else server.root).joinpath(name).write_bytes(os.urandom(4000))
    if way == "put":
        command = ["put", "--udp", "-q", *(str(local / n) for n in names), server.remote("")]
    else:
        command = ["get", "--udp", "-q", *(server.remote(n) for n in names), str(local)]
    started = time.monotonic()
    done = run_cli(*command[:3], "--limit-rate", "40K", *command[3:])
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed >= (30 * 4000 - 2 * 4096 - 4000) / (40 * 1024)
