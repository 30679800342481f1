"""TCP benchmark: ftransfer against baselines measured in the same run.

    python benchmarks/bench_tcp.py [--python PY] [--dir /dev/shm] [--size-mib 1024]
                                   [--runs 5] [--small-files 1000] [--quick]

Prints tables of medians and ratios:

- put and get of one large file, against a minimal Python socket pair
  (sendfile -> recv_into a 1 MiB buffer -> os.write to a new file, no verification);
  "transfer" is request to confirmed commit as reported by ``--json``; "wall" is the
  whole CLI process, interpreter start included (benchmarks/bench_bulk.py has the
  whole-command view with CPU times);
- N x 4 KiB files in one command: files/s through the CLI (interpreter start
  included), through the Python API (``ftransfer.Client(url).put_many``, transfer
  only), and rsync's daemon when rsync is installed, with and without fsync on the
  server;
- peak RSS (VmHWM) of the server and of the client during the large transfers.

The cases run interleaved, one of each per round, and ratios are taken within a
round: machines here are shared and noisy, and only ratios from one run mean
anything. Before each large run ~3 GiB of memory is touched and freed, which keeps
the VM's memory return from skewing large writes (see docs/perf-notes.md).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _harness as h

SMALL_BYTES = 4096
API_PUT = r"""
import sys, time
import ftransfer
url, remote, *paths = sys.argv[1:]
with ftransfer.Client(url) as client:
    start = time.perf_counter()
    outcomes = client.put_many(paths, remote)
    elapsed = time.perf_counter() - start
failed = [o for o in outcomes if isinstance(o, Exception)]
if failed:
    sys.exit(f"{len(failed)} failed, first: {failed[0]}")
print(elapsed)
"""
"""The API's part: connect, HELLO and the pipelined puts, in the install's
interpreter (so that ``--python`` measures that install's API too)."""
RSYNC_READY_S = 10.0


def bench_large(
    install: h.Install, work: Path, size: int, runs: int, settle_bytes: int
) -> tuple[dict[tuple[str, str], list[h.Sample]], int]:
    """Interleaved rounds of the raw pair, put and get; and the server's peak RSS."""
    source = work / "large.bin"
    h.make_file(source, size)
    try:
        with contextlib.ExitStack() as stack:
            pair = stack.enter_context(h.RawPair())
            cases, servers = h.bulk_cases([install], work, source, pair, stack)
            results = h.interleaved(cases, runs, before=lambda: h.settle(settle_bytes))
            server_peak = servers[install.label].status_kib("VmHWM")
    finally:
        source.unlink()
    return results, server_peak


def make_small_files(directory: Path, count: int) -> list[Path]:
    directory.mkdir()
    paths = []
    for i in range(count):
        path = directory / f"f{i:05d}"
        path.write_bytes(os.urandom(SMALL_BYTES))
        paths.append(path)
    return paths


def wait_listening(port: int, limit_s: float = RSYNC_READY_S) -> None:
    """Block until something accepts on the port (the rsync daemon starting up)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # a daemon's start-up, in a benchmark: not a test


@contextlib.contextmanager
def rsync_daemon(work: Path) -> Iterator[int]:
    """An rsync daemon on a free port, serving module ``bench`` (a fresh directory)."""
    target = work / "rsync-root"
    target.mkdir()
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"[bench]\npath = {target}\nread only = false\nuse chroot = false\n"
        f"uid = {os.getuid()}\ngid = {os.getgid()}\n"
    )
    port = h.free_port(socket.SOCK_STREAM)
    daemon = subprocess.Popen(
        [
            *("rsync", "--daemon", "--no-detach", "--address=127.0.0.1"),
            *(f"--config={conf}", f"--port={port}"),
        ]
    )
    try:
        wait_listening(port)
        yield port
    finally:
        daemon.terminate()
        daemon.wait()


def small_cases(
    install: h.Install, server: h.ServerProcess, paths: list[Path], label: str
) -> dict[str, Callable[[], float]]:
    """files/s of one put of all ``paths``, through the CLI and through the API; each
    run into a new directory."""
    runs = itertools.count()

    def fresh(prefix: str) -> str:
        name = f"{prefix}{next(runs)}"
        (server.root / name).mkdir()
        return name

    def cli() -> float:
        remote = server.remote(fresh("c") + "/")
        return (
            len(paths) / h.run_measured([*install.cli, "put", "-q", *map(str, paths), remote]).wall
        )

    def api() -> float:
        url = f"tcp://{server.host}:{server.port}"
        out = install.python_output(API_PUT, url, fresh("a") + "/", *map(str, paths))
        return len(paths) / float(out)

    return {f"CLI, {label}": cli, f"API, {label}": api}


def bench_small(install: h.Install, work: Path, count: int, runs: int) -> dict[str, list[float]]:
    paths = make_small_files(work / "small-src", count)
    cases: dict[str, Callable[[], float]] = {}
    with contextlib.ExitStack() as stack:
        for label, extra in (("fsync", ()), ("no fsync", ("--no-fsync",))):
            root = work / f"small-{label.replace(' ', '-')}"
            root.mkdir()
            server = stack.enter_context(h.ServerProcess(install, root, *extra))
            cases |= small_cases(install, server, paths, label)
        if shutil.which("rsync") is not None:
            port = stack.enter_context(rsync_daemon(work))
            rounds = itertools.count()
            source = f"{work / 'small-src'}/"

            def rsync() -> float:
                url = f"rsync://127.0.0.1:{port}/bench/r{next(rounds)}/"
                return count / h.timed(["rsync", "-a", source, url])

            cases["rsync daemon"] = rsync
        else:
            h.progress("rsync not installed: its row is skipped")
        return h.interleaved(cases, runs)


def report(
    large: dict[tuple[str, str], list[h.Sample]],
    server_peak_kib: int,
    small: dict[str, list[float]],
    size: int,
    fs: str,
    args: argparse.Namespace,
) -> None:
    raw = [s.wall for s in large["", h.RAW]]
    rows = [
        [
            h.RAW + ", no verification",
            f"{h.median(raw):.3f}",
            f"{size / h.median(raw) / 1e6:,.0f}",
            "1.00x",
        ]
    ]
    for (label, what), samples in large.items():
        if not label:
            continue
        for kind, values in (
            ("transfer (verified, fsync, rename)", [s.transfer or 0.0 for s in samples]),
            ("whole CLI process", [s.wall for s in samples]),
        ):
            seconds = h.median(values)
            rows.append(
                [
                    f"{label} {what}, {kind}",
                    f"{seconds:.3f}",
                    f"{size / seconds / 1e6:,.0f}",
                    h.ratio(h.per_round(raw, values)),
                ]
            )
    h.print_table(
        f"Large file: {args.size_mib} MiB on {fs}, medians of {args.runs} interleaved rounds "
        "(MB/s = 10^6 B/s; ratio: median (range) of per-round raw/case)",
        ["what", "median s", "MB/s", "vs raw pair"],
        rows,
    )
    h.print_table(
        f"Small files: {args.small_files} x 4 KiB in one command, on {fs}, medians of "
        f"{args.runs} interleaved rounds",
        ["what", "files/s"],
        [[name, f"{h.median(values):,.0f}"] for name, values in small.items()],
    )
    client_peak = max(s.client_rss_kib for (label, _), ss in large.items() if label for s in ss)
    print(f"Peak RSS: server {server_peak_kib / 1024:.0f} MiB, client {client_peak / 1024:.0f} MiB")


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--dir", default="/dev/shm", help="where files go (default tmpfs)")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5, help="rounds (after one warm-up)")
    parser.add_argument("--small-files", type=int, default=1000)
    args = parser.parse_args()
    settle_bytes = h.SETTLE_BYTES
    if args.quick:
        args.size_mib, args.runs, args.small_files, settle_bytes = 64, 2, 100, 256 * h.MIB
    (install,) = h.installs(args)
    print(f"{h.machine()}; {install.label}: {install.python}", flush=True)
    with h.work_dir(args.dir, "ftbench-tcp-") as work:
        large, server_peak = bench_large(
            install, work, args.size_mib * h.MIB, args.runs, settle_bytes
        )
        small = bench_small(install, work, args.small_files, args.runs)
        fs = h.filesystem(work)
    report(large, server_peak, small, args.size_mib * h.MIB, fs, args)


if __name__ == "__main__":
    main()
