"""The S3 backend: a 1 GiB put and get through ftransfer on a bucket, against boto3
writing and reading the same object straight to the same SeaweedFS.

Each round runs, in rotating order: ``ftransfer put`` and ``ftransfer get`` as whole
CLI processes (what a user waits for), and boto3's managed ``upload_file`` and
``download_file`` (its default TransferConfig: 8 MiB parts, 10 threads) in a
process of their own, timed for the call alone (in-process) and as the whole
process. The ratio is boto3's time over ftransfer's (above 1: ftransfer is
faster), per round, for TLS (the default) and ``--insecure``. The server's peak
RSS is read from /proc after the runs, for two file sizes, to show it is flat in
file size. SeaweedFS runs on the same 2 cores as everything else: it is part of
what both sides pay for.

    python benchmarks/bench_s3.py [--python PY] [--rounds 3] [--size-mib 1024]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _harness import (
    MIB,
    Install,
    ServerProcess,
    interleaved,
    make_file,
    median,
    parser,
    per_round,
    print_table,
    progress,
    ratio,
    work_dir,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from seaweed import Seaweed

BOTO = """
import sys, time, boto3
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
t = time.perf_counter()
if sys.argv[2] == "put":
    c.upload_file(sys.argv[3], sys.argv[4], sys.argv[5])
else:
    c.download_file(sys.argv[4], sys.argv[5], sys.argv[3])
print(time.perf_counter() - t)
"""


def whole(command: list[str], cleanup: Path | None = None) -> Callable[[], float]:
    def run() -> float:
        if cleanup is not None:
            cleanup.unlink(missing_ok=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    return run


def boto(
    python: str, args: list[str], inner: dict[str, list[float]], key: str
) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        done = subprocess.run(
            [python, "-c", BOTO, *args], check=True, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        inner.setdefault(key, []).append(float(done.stdout.split()[-1]))
        return elapsed

    return run


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--size-mib", type=int, default=1024)
    args = cli.parse_args()
    install = Install(args.python)
    size = (16 if args.quick else args.size_mib) * MIB
    rounds = 1 if args.quick else args.rounds
    print(f"command: {' '.join(sys.argv)}\nmachine: {os.cpu_count()} cores; files on /dev/shm")
    with work_dir("/dev/shm", "ftbench-s3-") as work:
        store = Seaweed(work / "weed")
        try:
            store.make_bucket("bench")
            os.environ.update(store.environment())
            source = work / "big.bin"
            make_file(source, size)
            measure(install, store, work, source, size, rounds)
            memory(install, store, work)
        finally:
            store.stop()


def measure(
    install: Install, store: Seaweed, work: Path, source: Path, size: int, rounds: int
) -> None:
    out = work / "out.bin"
    s3 = ["--store", "s3://bench/ft", "--s3-endpoint", store.endpoint]
    rows = []
    for mode, flags in (("TLS", []), ("insecure", ["--insecure"])):
        server = ServerProcess(install, Path("."), *s3, *flags)
        try:
            inner: dict[str, list[float]] = {}
            remote = server.remote("big.bin")
            cases = {
                "ft put": whole([*install.cli, "put", "-q", *flags, str(source), remote]),
                "ft get": whole([*install.cli, "get", "-q", *flags, remote, str(out)], out),
                "boto put": boto(
                    install.python,
                    [store.endpoint, "put", str(source), "bench", "direct.bin"],
                    inner,
                    "put",
                ),
                "boto get": boto(
                    install.python,
                    [store.endpoint, "get", str(out), "bench", "direct.bin"],
                    inner,
                    "get",
                ),
            }
            progress(f"{mode}: {rounds} rounds of {size // MIB} MiB")
            got = interleaved(cases, rounds)
        finally:
            server.stop()
        for way in ("put", "get"):
            ft, bt = got[f"ft {way}"], got[f"boto {way}"]
            rate = size / median(ft) / 1e6
            rows.append([
                f"{way} ({mode})", f"{median(ft):.2f} s ({rate:.0f} MB/s)",
                f"{median(bt):.2f} s", f"{median(inner[way][-rounds:]):.2f} s",
                ratio(per_round(bt, ft)),
            ])  # fmt: skip
    print_table(
        f"{size // MIB} MiB through ftransfer on S3 vs boto3 straight to SeaweedFS "
        f"(medians of {rounds} interleaved rounds)",
        ["transfer", "ftransfer CLI (whole command)", "boto3 (whole process)",
         "boto3 (the call, in-process)", "boto3 / ftransfer (per round)"],
        rows,
    )  # fmt: skip


def memory(install: Install, store: Seaweed, work: Path) -> None:
    """The server's peak RSS after a put and a get, for two file sizes."""
    rows = []
    for mib in (64, 512):
        source = work / f"m{mib}.bin"
        make_file(source, mib * MIB)
        server = ServerProcess(
            install, Path("."), "--store", f"s3://bench/m{mib}", "--s3-endpoint", store.endpoint,
            "--insecure",
        )  # fmt: skip
        try:
            remote = server.remote("m.bin")
            whole([*install.cli, "put", "-q", "--insecure", str(source), remote])()
            whole([*install.cli, "get", "-q", "--insecure", remote, str(work / "m.out")])()
            rows.append([f"{mib} MiB", f"{server.status_kib('VmHWM') / 1024:.0f} MiB"])
        finally:
            server.stop()
        source.unlink()
    print_table("Server peak RSS (VmHWM) after a put and a get", ["file", "peak RSS"], rows)


if __name__ == "__main__":
    main()
