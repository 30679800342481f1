"""TFTP benchmark on loopback: ftransfer's TFTP server and client against C peers.

    python benchmarks/bench_tftp.py [--size-mib 64] [--runs 3] [--blksizes 512,1428,8192]

Needs curl, Debian's ``atftp`` and ``atftpd`` (``apt-get install atftp atftpd``) and
tftpd-hpa's ``in.tftpd``. The two Debian server packages conflict, so when
tftpd-hpa is not installed the script unpacks its .deb (``apt-get download
tftpd-hpa``) into a temporary directory and runs it from there; nothing is
installed. Peers that are missing are skipped.

One file of --size-mib on tmpfs is downloaded, at each block size:

- by curl (lockstep, RFC 1350 + blksize) from tftpd-hpa, atftpd and ftransfer;
- by atftp with windowsize 32 (RFC 7440) from atftpd and ftransfer (tftpd-hpa has
  no windowsize; atftp falls back to lockstep against it, shown for reference);
- by the ftransfer client (lockstep, like curl) and by curl, both from tftpd-hpa.

Each cell is the median of --runs client runs after a warm-up, in MB/s (10^6
bytes/s) of client wall time, servers measured in the same run and interleaved so
that drift hits them alike. The ftransfer client is timed by its own --json
report, which leaves out the ~0.15 s of Python start-up that a curl run does not
pay; curl's start-up (a few ms) stays in its figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "ftransfer"]
FILE = "file.bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_tftpd_hpa(work: Path) -> str | None:
    """tftpd-hpa's in.tftpd: installed, or unpacked from its .deb into ``work``."""
    installed = Path("/usr/sbin/in.tftpd")
    if installed.exists() and installed.resolve().name == "in.tftpd":
        return str(installed)
    if shutil.which("apt-get") is None:
        return None
    fetched = subprocess.run(
        ["apt-get", "download", "tftpd-hpa"], cwd=work, capture_output=True, check=False
    )
    debs = list(work.glob("tftpd-hpa_*.deb"))
    if fetched.returncode != 0 or not debs:
        return None
    subprocess.run(["dpkg", "-x", str(debs[0]), str(work / "hpa")], check=True)
    binary = work / "hpa" / "usr" / "sbin" / "in.tftpd"
    return str(binary) if binary.exists() else None


@contextlib.contextmanager
def serving(command: list[str], ready: Callable[[subprocess.Popen[str]], int]) -> Iterator[int]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield ready(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_udp(port: int) -> Callable[[subprocess.Popen[str]], int]:
    """Ready when the port is bound (the C servers print nothing)."""

    def ready(proc: subprocess.Popen[str]) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    return port
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            time.sleep(0.05)  # polling a C daemon's bind, not a test
        raise RuntimeError("server did not bind")

    return ready


def ftransfer_ready(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return int(line.split("tftp://", 1)[1].rsplit(":", 1)[1])


def servers(work: Path, root: Path, hpa: str | None) -> dict[str, tuple[list[str], Any]]:
    found: dict[str, tuple[list[str], Any]] = {}
    if hpa is not None:
        port = free_port()
        found["tftpd-hpa"] = (
            [hpa, "-L", "-a", f"127.0.0.1:{port}", "-s", str(root)],
            wait_udp(port),
        )
    if shutil.which("atftpd"):
        port = free_port()
        found["atftpd"] = (
            [
                "atftpd",
                "--daemon",
                "--no-fork",
                "--port",
                str(port),
                "--bind-address",
                "127.0.0.1",
                "--logfile",
                str(work / "atftpd.log"),
                str(root),
            ],
            wait_udp(port),
        )
    found["ftransfer"] = (
        [
            *CLI,
            "serve",
            "--root",
            str(root),
            "--port",
            "0",
            "--no-udp",
            "--tftp-port",
            "0",
            "--log-level",
            "warning",
        ],
        ftransfer_ready,
    )
    return found


RUN_LIMIT_S = 120
"""A client run that takes longer is reported as stalled (atftp <- atftpd at
blksize 8192 and windowsize 32 was seen to hang here)."""


def run_wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        command,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=RUN_LIMIT_S,
    )
    return time.perf_counter() - start


def curl(port: int, blksize: int, out: Path) -> float:
    url = f"tftp://127.0.0.1:{port}/{FILE}"
    return run_wall(["curl", "-sS", "--tftp-blksize", str(blksize), "-o", str(out), url])


def atftp(port: int, blksize: int, out: Path) -> float:
    options = ["--option", f"blksize {blksize}", "--option", "windowsize 32"]
    return run_wall(["atftp", *options, "-g", "-r", FILE, "-l", str(out), "127.0.0.1", str(port)])


def ftransfer_client(port: int, blksize: int, out: Path) -> float:
    url = f"tftp://127.0.0.1:{port}/{FILE}"
    args = ["get", url, str(out), "--blksize", str(blksize), "--windowsize", "1", "--json", "-q"]
    done = subprocess.run([*CLI, *args], check=True, capture_output=True, timeout=RUN_LIMIT_S)
    return float(json.loads(done.stdout.splitlines()[-1])["seconds"])


CLIENTS = {"curl": curl, "atftp w32": atftp, "ftransfer": ftransfer_client}
PAIRS = [
    ("curl", "tftpd-hpa"),
    ("curl", "atftpd"),
    ("curl", "ftransfer"),
    ("atftp w32", "tftpd-hpa"),
    ("atftp w32", "atftpd"),
    ("atftp w32", "ftransfer"),
    ("ftransfer", "tftpd-hpa"),
]


def measure(
    ports: dict[str, int], blksize: int, runs: int, out: Path, size: int
) -> dict[tuple[str, str], float]:
    samples: dict[tuple[str, str], list[float]] = {}
    stalled: set[tuple[str, str]] = set()
    pairs = [(c, s) for c, s in PAIRS if s in ports and (c != "atftp w32" or shutil.which("atftp"))]
    for round_ in range(runs + 1):  # round 0 is the warm-up
        for client, server in pairs:
            if (client, server) in stalled:
                continue
            try:
                seconds = CLIENTS[client](ports[server], blksize, out)
            except subprocess.TimeoutExpired:
                stalled.add((client, server))
                continue
            if out.stat().st_size != size:
                raise RuntimeError(f"{client} <- {server}: got {out.stat().st_size} bytes")
            out.unlink()
            if round_:
                samples.setdefault((client, server), []).append(seconds)
    rates = {pair: size / statistics.median(s) / 1e6 for pair, s in samples.items()}
    return rates | {pair: 0.0 for pair in stalled}


def table(results: dict[int, dict[tuple[str, str], float]]) -> str:
    lines = [
        "| blksize | client | tftpd-hpa | atftpd | ftransfer | ftransfer / tftpd-hpa | "
        "ftransfer / atftpd |",
        "|---|---|---|---|---|---|---|",
    ]
    for blksize, cells in results.items():
        for client in CLIENTS:
            row = {s: cells.get((client, s)) for s in ("tftpd-hpa", "atftpd", "ftransfer")}
            if not any(row.values()):
                continue
            text = ["-" if v is None else f"{v:.1f}" if v else "stalled" for v in row.values()]
            mine = row["ftransfer"]
            ratios = [
                f"{mine / row[base]:.2f}x" if mine and row[base] else "-"  # type: ignore[operator]
                for base in ("tftpd-hpa", "atftpd")
            ]
            lines.append(f"| {blksize} | {client} | {' | '.join(text)} | {' | '.join(ratios)} |")
        hpa_curl = cells.get(("curl", "tftpd-hpa"))
        mine = cells.get(("ftransfer", "tftpd-hpa"))
        if hpa_curl and mine:
            lines.append(
                f"| {blksize} | ftransfer client vs curl, from tftpd-hpa | | | | "
                f"{mine / hpa_curl:.2f}x | |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--blksizes", default="512,1428,8192")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        os.chmod(work, 0o755)
        os.chmod(root, 0o755)
        (root / FILE).write_bytes(os.urandom(size))
        os.chmod(root / FILE, 0o644)
        hpa = find_tftpd_hpa(work)
        with contextlib.ExitStack() as stack:
            ports = {
                name: stack.enter_context(serving(command, ready))
                for name, (command, ready) in servers(work, root, hpa).items()
            }
            print(f"servers: {', '.join(ports)}; file {args.size_mib} MiB on tmpfs", flush=True)
            results = {}
            for blksize in (int(b) for b in args.blksizes.split(",")):
                results[blksize] = measure(ports, blksize, args.runs, work / "out.bin", size)
                print(table({blksize: results[blksize]}), file=sys.stderr, flush=True)
    print(f"median of {args.runs} runs, MB/s (10^6 bytes/s), client wall time")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
