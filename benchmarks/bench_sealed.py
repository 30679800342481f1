"""Sealed UDP against --insecure UDP, whole CLI commands, the same build, same rounds.

    python benchmarks/bench_sealed.py [--size-mib 64] [--runs 5] [--chunk 1400]

Two servers on loopback (one TLS, sealing UDP; one --insecure), one file on tmpfs;
each round runs put and get against both, interleaved, and the table prints the
median wall time of each whole command (start-up, the TLS connection and its
ticket included for the sealed one) and the median and range of the per-round
ratio plaintext / sealed (1.0: sealing costs nothing; the issue's target is
>= 0.6x the plaintext speed). Also printed: the in-process cost of sealing and
opening one datagram (AES-128-GCM via ``cryptography``), the figure the wall
times should be read against.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "ftransfer"]


def _server(root: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [*CLI, "serve", "--root", str(root), "--port", "0", "--anonymous-write", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(line.split("tcp://127.0.0.1:")[1].split()[0])
    return proc, port


def _timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([*CLI, *args], check=True, env=env, capture_output=True)
    return time.perf_counter() - started


def _per_datagram_us(chunk: int) -> tuple[float, float]:
    from ftransfer.proto.udp.sealed import CLIENT_TO_SERVER, Opener, Sealer, SealStats

    inner = os.urandom(chunk + 34)
    sealer = Sealer(os.urandom(32), CLIENT_TO_SERVER, 1)
    n = 20000
    seal_us = timeit.timeit(lambda: sealer.seal(inner), number=n) / n * 1e6
    opener = Opener(sealer.secret, CLIENT_TO_SERVER, 1, SealStats())
    datagrams = [sealer.seal(inner) for _ in range(n)]
    it = iter(datagrams)
    open_us = timeit.timeit(lambda: opener.open(next(it)), number=n) / n * 1e6
    return seal_us, open_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=1400)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_STATE_HOME": str(base / "state"),
    }
    source = base / "file.bin"
    source.write_bytes(os.urandom(args.size_mib << 20))
    servers = {}
    for mode, extra in (("sealed", ()), ("insecure", ("--insecure",))):
        (base / mode).mkdir()
        servers[mode] = _server(base / mode, env, *extra)
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for round_number in range(args.runs + 1):  # round 0 warms up
            for mode, (_proc, port) in servers.items():
                flags = ["--udp", "--chunk", str(args.chunk), "-q"]
                flags += ["--insecure"] if mode == "insecure" else []
                remote = f"127.0.0.1:{port}/file.bin"
                put = _timed(["put", *flags, str(source), remote], env)
                get = _timed(["get", *flags, remote, str(base / f"out-{mode}.bin")], env)
                if round_number:
                    times.setdefault((mode, "put"), []).append(put)
                    times.setdefault((mode, "get"), []).append(get)
    finally:
        for proc, _port in servers.values():
            proc.terminate()
            proc.wait()
    size = args.size_mib << 20
    print(f"UDP, {args.size_mib} MiB, payload {args.chunk} B, {args.runs} interleaved rounds")
    print("| command | sealed s | --insecure s | sealed MB/s | sealed speed vs --insecure |")
    print("| --- | --- | --- | --- | --- |")
    for op in ("put", "get"):
        sealed, plain = times[("sealed", op)], times[("insecure", op)]
        ratios = sorted(p / s for p, s in zip(plain, sealed, strict=True))
        print(
            f"| {op} (whole command) | {statistics.median(sealed):.3f} | "
            f"{statistics.median(plain):.3f} | {size / statistics.median(sealed) / 1e6:,.0f} | "
            f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) |"
        )
    seal_us, open_us = _per_datagram_us(args.chunk)
    print(f"in-process: seal {seal_us:.2f} us, open {open_us:.2f} us per datagram")
    subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
