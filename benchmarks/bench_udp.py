"""UDP benchmark on loopback: ftransfer's UDP mode against TFTP peers, same run.

    python benchmarks/bench_udp.py [--size-mib 64] [--runs 5]

Needs Debian's ``atftp`` and ``atftpd`` (``apt-get install atftp atftpd``) and curl;
peers that are missing are skipped. The cases run interleaved, one of each per
round, and each is compared with atftp's run of the same round; it prints median
times and the median and range of those ratios:

- ftransfer get and put over UDP with 1,400-byte payloads (the default), and with
  16 KiB payloads (what loopback allows);
- atftp <- atftpd with blksize 1428 and windowsize 32 (RFC 7440), the fastest TFTP
  measured here (docs/perf-notes.md: ~356 MB/s);
- curl <- atftpd with blksize 1428: lockstep TFTP (one block per round trip).

Files live on tmpfs. The issue's target is >= 0.85x atftp; see the README for what
this build reaches and why.
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
from collections.abc import Callable
from pathlib import Path

CLI = [sys.executable, "-m", "ftransfer"]
BASELINE = "atftp <- atftpd, blksize 1428, windowsize 32"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def ftransfer_seconds(args: list[str]) -> float:
    """Transfer time as the CLI reports it (--json), interpreter start excluded."""
    out = subprocess.run([*CLI, *args, "--json", "-q"], check=True, capture_output=True)
    return float(json.loads(out.stdout.splitlines()[-1])["seconds"])


Cases = dict[str, Callable[[], float]]


def ftransfer_cases(remote: str, work: Path, source: Path) -> Cases:
    cases: Cases = {}
    out = str(work / "ft-out.bin")
    for chunk in (1400, 16384):
        label = f"{chunk} B payloads"
        get = ["get", "--udp", "--chunk", str(chunk), f"{remote}/file.bin", out]
        put = ["put", "--udp", "--chunk", str(chunk), str(source), f"{remote}/up.bin"]
        cases[f"ftransfer udp get, {label}"] = lambda a=get: ftransfer_seconds(a)
        cases[f"ftransfer udp put, {label}"] = lambda a=put: ftransfer_seconds(a)
    tcp = ["get", f"{remote}/file.bin", out]
    cases["ftransfer tcp get (reference)"] = lambda: ftransfer_seconds(tcp)
    return cases


def tftp_cases(port: int, work: Path) -> Cases:
    out = str(work / "tftp-out.bin")
    windowed = ["atftp", "--option", "blksize 1428", "--option", "windowsize 32", "-g",
                "-r", "file.bin", "-l", out, "127.0.0.1", str(port)]
    cases: Cases = {BASELINE: lambda: timed(windowed)}
    if shutil.which("curl"):
        lockstep = ["curl", "-s", "--tftp-blksize", "1428", "-o", out,
                    f"tftp://127.0.0.1:{port}/file.bin"]
        cases["curl <- atftpd, blksize 1428 (lockstep)"] = lambda: timed(lockstep)
    return cases


def start_servers(work: Path, source: Path, stack: contextlib.ExitStack) -> Cases:
    """ftransfer's server and, if installed, atftpd, both serving ``source``."""
    for sub in ("ft", "tftp"):
        (work / sub).mkdir()
        shutil.copy(source, work / sub / "file.bin")
    proc = subprocess.Popen(
        [*CLI, "serve", "--root", str(work / "ft"), "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, text=True,
    )
    stack.callback(_stop, proc)
    assert proc.stdout is not None
    port = int(proc.stdout.readline().rsplit(":", 1)[1])
    cases: Cases = {}
    if shutil.which("atftpd") and shutil.which("atftp"):
        tftp_port = free_port()
        daemon = subprocess.Popen([
            "atftpd", "--daemon", "--no-fork", "--port", str(tftp_port), "--bind-address",
            "127.0.0.1", "--user", "root", "--group", "root", "--logfile", "/dev/null",
            str(work / "tftp")])
        stack.callback(_stop, daemon)
        time.sleep(0.5)  # atftpd has no readiness signal; this is a benchmark, not a test
        cases |= tftp_cases(tftp_port, work)
    else:
        print("atftp/atftpd not installed: TFTP rows skipped", file=sys.stderr)
    return cases | ftransfer_cases(f"127.0.0.1:{port}", work, source)


def _stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="ftbench-udp-", dir="/dev/shm"))
    times: dict[str, list[float]] = {}
    try:
        source = work / "source.bin"
        source.write_bytes(os.urandom(size))
        with contextlib.ExitStack() as stack:
            cases = start_servers(work, source, stack)
            for case in cases.values():  # warm-up
                case()
            # Interleaved: every round runs every case once, so a slow spell of this
            # shared VM hits all of them, and each ratio is taken within its round.
            for _ in range(args.runs):
                for name, case in cases.items():
                    times.setdefault(name, []).append(case())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(times, size, args)


def report(times: dict[str, list[float]], size: int, args: argparse.Namespace) -> None:
    base = times.get(BASELINE)
    print(f"\nUDP on loopback, {args.size_mib} MiB on tmpfs, {args.runs} interleaved rounds; "
          "median time, and the median and range of the per-round ratio to atftp\n")
    print("| what | median s | MB/s | vs atftp windowsize 32 (median) | (range) |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in times.items():
        seconds = statistics.median(runs)
        ratios = sorted(b / t for b, t in zip(base, runs, strict=True)) if base else []
        median = f"{statistics.median(ratios):.2f}" if ratios else "n/a"
        spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if ratios else "n/a"
        print(f"| {name} | {seconds:.3f} | {size / seconds / 1e6:.0f} | {median} | {spread} |")


if __name__ == "__main__":
    main()
