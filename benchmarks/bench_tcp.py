"""TCP benchmark: ftransfer against baselines measured in the same run.

    python benchmarks/bench_tcp.py [--dir /dev/shm/ftbench] [--size-mib 1024] [--runs 5]

Prints a table of medians and ratios:

- put and get of one large file, against a minimal Python socket pair
  (sendfile -> recv_into a 1 MiB buffer -> os.write to a new file, no verification);
  "transfer" is request to confirmed commit as reported by ``--json``; "wall" is the
  whole CLI process, interpreter start included;
- N x 4 KiB files in one command: files/s through the CLI (interpreter start
  included), through the Python API (transfer only), and rsync's daemon when rsync is
  installed, with and without fsync on the server;
- peak RSS (VmHWM) of the server and of the client during the large transfers.

Machines here are shared and noisy: only ratios from one run mean anything. Before
each timed run ~3 GiB of memory is touched and freed, which keeps the VM's memory
return from skewing large writes (see docs/perf-notes.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "ftransfer"]
CHUNK = 1 << 20

RECEIVER = r"""
import os, socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
buf = bytearray(1 << 20); view = memoryview(buf)
while True:
    conn, _ = listener.accept()
    target = sys.stdin.readline().strip()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    while n := conn.recv_into(buf):
        os.write(fd, view[:n])
    os.close(fd)
    conn.sendall(b"k")
    conn.close()
"""


def settle() -> None:
    """Touch and free ~3 GiB so the next large write does not wait on the host."""
    block = bytearray(3 << 30)
    block[::4096] = bytes(len(block) // 4096)
    del block


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            n = min(remaining, 64 * CHUNK)
            out.write(os.urandom(n))
            remaining -= n


class RawPair:
    """The baseline: one receiver process, the sender is this process (sendfile)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.port = int(self.proc.stdout.readline())

    def send(self, source: Path, target: Path) -> float:
        assert self.proc.stdin is not None
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", self.port)) as sock, open(source, "rb") as f:
            self.proc.stdin.write(f"{target}\n")
            self.proc.stdin.flush()
            sock.sendfile(f)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b"k"
        return time.perf_counter() - start

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Server:
    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--root", str(root), "--port", "0", "--log-level", "warning", *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = int(line.rsplit(":", 1)[1])

    def remote(self, path: str) -> str:
        return f"127.0.0.1:{self.port}/{path}"

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM"))
        return int(line.split()[1]) / 1024

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


LAUNCHER = r"""
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "ftransfer", *sys.argv[1:]])
_pid, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
sys.stderr.write(f"@measured {wall} {usage.ru_maxrss}\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli(*args: str) -> tuple[float, float, list[dict[str, float]]]:
    """(wall seconds, peak RSS MiB, --json records) of one CLI run.

    The CLI is started by a small launcher that forks it and reads its rusage:
    wait4 from this process would report this process's own history too (children
    started with vfork inherit the parent's high-water mark).
    """
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed: {proc.stderr.decode()}")
    measured = proc.stderr.decode().rsplit("@measured ", 1)[1].split()
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    return float(measured[0]), int(measured[1]) / 1024, records


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_large(work: Path, server: Server, size: int, runs: int) -> dict[str, list[float]]:
    source = work / "large.bin"
    make_file(source, size)
    pair = RawPair()
    results: dict[str, list[float]] = {
        k: [] for k in ("raw", "put", "put_wall", "get", "get_wall", "client_rss")
    }
    try:
        for run in range(runs + 1):  # run 0 warms caches and is discarded
            settle()
            raw = pair.send(source, work / "raw.out")
            (work / "raw.out").unlink()
            (server.root / "large.bin").unlink(missing_ok=True)  # as the baseline, untimed
            settle()
            put_wall, put_rss, [put] = run_cli(
                "put", "-q", "--json", str(source), server.remote("large.bin")
            )
            settle()
            get_wall, get_rss, [get] = run_cli(
                "get", "-q", "--json", server.remote("large.bin"), str(work / "large.out")
            )
            (work / "large.out").unlink()
            if run:
                for key, value in (
                    ("raw", raw),
                    ("put", put["seconds"]),
                    ("put_wall", put_wall),
                    ("get", get["seconds"]),
                    ("get_wall", get_wall),
                    ("client_rss", max(put_rss, get_rss)),
                ):
                    results[key].append(value)
    finally:
        pair.close()
        source.unlink()
    return results


def make_small_files(directory: Path, count: int) -> list[Path]:
    directory.mkdir()
    paths = []
    for i in range(count):
        path = directory / f"f{i:05d}"
        path.write_bytes(os.urandom(4096))
        paths.append(path)
    return paths


def api_put_seconds(port: int, items: list[tuple[Path, str]]) -> float:
    from ftransfer import Client

    async def go() -> float:
        async with await Client.connect("127.0.0.1", port) as client:
            start = time.perf_counter()
            outcomes = await client.put_files(items)
            elapsed = time.perf_counter() - start
        assert all(not isinstance(o, Exception) for o in outcomes)
        return elapsed

    return asyncio.run(go())


def wait_listening(port: int, limit_s: float = 10.0) -> None:
    """Block until something accepts on the port (the rsync daemon starting up)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def rsync_seconds(work: Path, source: Path, runs: int) -> list[float] | None:
    if shutil.which("rsync") is None:
        return None
    target = work / "rsync-root"
    target.mkdir()
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"[bench]\npath = {target}\nread only = false\nuse chroot = false\n"
        f"uid = {os.getuid()}\ngid = {os.getgid()}\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(
        [
            "rsync",
            "--daemon",
            "--no-detach",
            f"--config={conf}",
            f"--port={port}",
            "--address=127.0.0.1",
        ]
    )
    times = []
    try:
        wait_listening(port)
        for run in range(runs + 1):
            url = f"rsync://127.0.0.1:{port}/bench/r{run}/"
            start = time.perf_counter()
            subprocess.run(["rsync", "-a", f"{source}/", url], check=True)
            if run:
                times.append(time.perf_counter() - start)
    finally:
        daemon.terminate()
        daemon.wait()
    return times


def bench_small(work: Path, count: int, runs: int) -> dict[str, list[float]]:
    source_dir = work / "small-src"
    paths = make_small_files(source_dir, count)
    results: dict[str, list[float]] = {}
    for label, extra in (("fsync", ()), ("no-fsync", ("--no-fsync",))):
        root = work / f"small-{label}"
        root.mkdir()
        server = Server(root, *extra)
        cli, api = [], []
        try:
            for run in range(runs + 1):
                (root / f"c{run}").mkdir()
                wall, _rss, _records = run_cli(
                    "put", "-q", *map(str, paths), server.remote(f"c{run}/")
                )
                (root / f"a{run}").mkdir()
                seconds = api_put_seconds(server.port, [(p, f"a{run}/{p.name}") for p in paths])
                if run:
                    cli.append(count / wall)
                    api.append(count / seconds)
        finally:
            server.close()
        results[f"cli {label}"], results[f"api {label}"] = cli, api
    rsync = rsync_seconds(work, source_dir, runs)
    if rsync is not None:
        results["rsync daemon"] = [count / s for s in rsync]
    return results


def filesystem(path: Path) -> str:
    out = subprocess.run(
        ["df", "--output=fstype", str(path)], capture_output=True, text=True, check=False
    ).stdout.split()
    return out[-1] if out else "?"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(
    large: dict[str, list[float]],
    small: dict[str, list[float]],
    size: int,
    server_rss: float,
    fs: str,
    runs: int,
) -> None:
    mb = size / 1e6
    raw = median(large["raw"])
    print(f"\nLarge file: {size >> 20} MiB on {fs}, median of {runs} runs (MB/s = 10^6 B/s)\n")
    print(row(["what", "median s", "MB/s", "vs raw pair"]))
    print(row(["---"] * 4))
    print(
        row(
            [
                "raw pair (sendfile -> recv_into -> write), no verification",
                f"{raw:.3f}",
                f"{mb / raw:.0f}",
                "1.00",
            ]
        )
    )
    for key, text in (
        ("put", "ftransfer put, transfer (verified, fsync, rename)"),
        ("get", "ftransfer get, transfer (verified, fsync, rename)"),
        ("put_wall", "ftransfer put, whole CLI process"),
        ("get_wall", "ftransfer get, whole CLI process"),
    ):
        value = median(large[key])
        print(row([text, f"{value:.3f}", f"{mb / value:.0f}", f"{raw / value:.2f}"]))
    print(f"\nSmall files: 4 KiB each, one command, on {fs}, median of {runs} runs\n")
    print(row(["what", "files/s"]))
    print(row(["---"] * 2))
    for key, values in small.items():
        print(row([key, f"{median(values):,.0f}"]))
    print(f"\nPeak RSS: server {server_rss:.0f} MiB, client {max(large['client_rss']):.0f} MiB\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/dev/shm", help="where files go (default tmpfs)")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--small-files", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ftbench-", dir=args.dir))
    try:
        root = work / "served"
        root.mkdir()
        server = Server(root)
        try:
            large = bench_large(work, server, args.size_mib << 20, args.runs)
            server_rss = server.peak_rss_mib()
        finally:
            server.close()
        shutil.rmtree(root)
        small = bench_small(work, args.small_files, args.runs)
        report(large, small, args.size_mib << 20, server_rss, filesystem(work), args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
