"""UDP benchmark on loopback: ftransfer's UDP mode against TFTP peers, same run.

    python benchmarks/bench_udp.py [--size-mib 64] [--runs 3]

Needs Debian's ``atftp`` and ``atftpd`` (``apt-get install atftp atftpd``) and curl;
peers that are missing are skipped. Prints medians and the ratio to atftp:

- ftransfer get and put over UDP with 1,400-byte payloads (the default), and with
  16 KiB payloads (what loopback allows);
- atftp <- atftpd with blksize 1428 and windowsize 32 (RFC 7440), the fastest TFTP
  measured here (PERF-NOTES: ~356 MB/s);
- curl <- atftpd with blksize 1428: lockstep TFTP (one block per round trip).

Files live on tmpfs. The issue's target is >= 0.85x atftp; see the README for what
this build reaches and why.
"""

from __future__ import annotations

import argparse
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


def median_of(runs: int, once: Callable[[], float]) -> float:
    once()  # warm-up
    return statistics.median(once() for _ in range(runs))


def bench_ftransfer(work: Path, source: Path, runs: int) -> dict[str, float]:
    root = work / "ft"
    root.mkdir()
    shutil.copy(source, root / "file.bin")
    proc = subprocess.Popen(
        [*CLI, "serve", "--root", str(root), "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().rsplit(":", 1)[1])
    remote = f"127.0.0.1:{port}"
    results = {}
    try:
        for chunk in (1400, 16384):
            label = f"{chunk} B payloads"
            results[f"ftransfer udp get, {label}"] = median_of(
                runs,
                lambda c=chunk: ftransfer_seconds(
                    [
                        "get",
                        "--udp",
                        "--chunk",
                        str(c),
                        f"{remote}/file.bin",
                        str(work / "ft-out.bin"),
                    ]
                ),
            )
            results[f"ftransfer udp put, {label}"] = median_of(
                runs,
                lambda c=chunk: ftransfer_seconds(
                    ["put", "--udp", "--chunk", str(c), str(source), f"{remote}/up.bin"]
                ),
            )
        results["ftransfer tcp get (reference)"] = median_of(
            runs, lambda: ftransfer_seconds(["get", f"{remote}/file.bin", str(work / "ft-out.bin")])
        )
    finally:
        proc.terminate()
        proc.wait()
    return results


def bench_tftp(work: Path, source: Path, runs: int) -> dict[str, float]:
    if not (shutil.which("atftpd") and shutil.which("atftp")):
        print("atftp/atftpd not installed: TFTP rows skipped", file=sys.stderr)
        return {}
    root = work / "tftp"
    root.mkdir()
    shutil.copy(source, root / "file.bin")
    port = free_port()
    daemon = subprocess.Popen(
        [
            "atftpd",
            "--daemon",
            "--no-fork",
            "--port",
            str(port),
            "--bind-address",
            "127.0.0.1",
            "--user",
            "root",
            "--group",
            "root",
            "--logfile",
            "/dev/null",
            str(root),
        ],
    )
    results = {}
    out = str(work / "tftp-out.bin")
    try:
        time.sleep(0.5)  # atftpd has no readiness signal; this is a benchmark, not a test
        windowed = [
            "atftp",
            "--option",
            "blksize 1428",
            "--option",
            "windowsize 32",
            "-g",
            "-r",
            "file.bin",
            "-l",
            out,
            "127.0.0.1",
            str(port),
        ]
        results["atftp <- atftpd, blksize 1428, windowsize 32"] = median_of(
            runs, lambda: timed(windowed)
        )
        if shutil.which("curl"):
            lockstep = [
                "curl",
                "-s",
                "--tftp-blksize",
                "1428",
                "-o",
                out,
                f"tftp://127.0.0.1:{port}/file.bin",
            ]
            results["curl <- atftpd, blksize 1428 (lockstep)"] = median_of(
                runs, lambda: timed(lockstep)
            )
    finally:
        daemon.terminate()
        daemon.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="ftbench-udp-", dir="/dev/shm"))
    try:
        source = work / "source.bin"
        source.write_bytes(os.urandom(size))
        results = bench_tftp(work, source, args.runs)
        results |= bench_ftransfer(work, source, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results.get("atftp <- atftpd, blksize 1428, windowsize 32")
    print(f"\nUDP on loopback, {args.size_mib} MiB on tmpfs, median of {args.runs} runs\n")
    print("| what | median s | MB/s | vs atftp windowsize 32 |")
    print("| --- | --- | --- | --- |")
    for name, seconds in results.items():
        ratio = f"{base / seconds:.2f}" if base else "n/a"
        print(f"| {name} | {seconds:.3f} | {size / seconds / 1e6:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
