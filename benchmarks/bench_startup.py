"""Start-up: what the CLI costs before it does anything, against the bare interpreter.

    python benchmarks/bench_startup.py [--python PY] [--baseline-python PY]
                                       [--rounds 20] [--clients 100] [--quick]

A command line tool is judged by the whole command (docs/perf-notes.md, "Start-up is
part of the product"). Measured in interleaved rounds, one run of each case per round,
each against the same install's bare interpreter:

- ``python -c pass`` against ``ftransfer --version`` (target: within 3x);
- the CLI's part of a one-file ``get``: from just before the process is spawned until
  the first byte of its request reaches the server (target: under 60 ms). The
  "server" is a listener in this process that only notes the kernel's receive
  timestamp of the first byte (SO_TIMESTAMPNS) and then kills the client; the floor
  beside it is a bare interpreter that connects and sends one byte;
- ``--clients`` concurrent processes, wall time from the first spawn to the last
  exit: ``python -c pass``, ``ftransfer --version``, and one-file ``get``s of 4 KiB
  from a real server of the same install, all into one directory on tmpfs.

Time a non-editable install (``--python``): an editable install's import hook adds
~20 ms to every start, and the table says when the install is editable. With
``--baseline-python`` the other install's cases run in the same rounds, and a last
column compares the two.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import _harness as h

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's receive timestamp with nanoseconds (not exported by Python's socket)."""
CLIENT_LIMIT_S = 30.0
"""A client that has sent nothing after this long has failed, not started slowly."""
VERSION_TARGET, FIRST_BYTE_TARGET_MS = 3.0, 60.0
SMALL_BYTES = 4096
FLOOR = (
    "import _socket, sys; s = _socket.socket(); s.connect(('127.0.0.1', int(sys.argv[1]))); "
    "s.send(b'x')"
)


def wall(command: Sequence[str]) -> float:
    """Spawn to exit, seconds (the spawn itself included, as for every case)."""
    start = time.perf_counter()
    code = subprocess.run(command, stdout=subprocess.DEVNULL, check=False).returncode
    elapsed = time.perf_counter() - start
    if code:
        raise RuntimeError(f"{' '.join(command)} exited with {code}")
    return elapsed


class FirstByte:
    """A listener that notes when the first byte of a client's request arrives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # accepted ones inherit it
        self.sock.settimeout(CLIENT_LIMIT_S)
        self.port = int(self.sock.getsockname()[1])

    def seconds(self, command: Sequence[str]) -> float:
        """From just before ``command`` is spawned to its first byte's arrival."""
        start = time.time_ns()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _peer = self.sock.accept()
            with conn:
                conn.settimeout(CLIENT_LIMIT_S)
                data, ancillary, _flags, _addr = conn.recvmsg(1, socket.CMSG_SPACE(16))
                arrived = time.time_ns()  # if the kernel gave no timestamp
                for level, kind, payload in ancillary:
                    if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
                        sec, nsec = struct.unpack("qq", payload[:16])
                        arrived = sec * 1_000_000_000 + nsec
        finally:
            proc.kill()
            proc.wait()
        if not data:
            raise RuntimeError(f"{' '.join(command)} connected but sent nothing")
        return (arrived - start) / 1e9

    def close(self) -> None:
        self.sock.close()


def concurrently(commands: Sequence[Sequence[str]]) -> float:
    """Start all, wait for all: seconds from the first spawn to the last exit."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in commands
    ]
    codes = [p.wait(timeout=CLIENT_LIMIT_S * 4) for p in procs]
    elapsed = time.perf_counter() - start
    failed = sum(1 for c in codes if c)
    if failed:
        raise RuntimeError(f"{failed} of {len(commands)} of {commands[0]} failed")
    return elapsed


def editable(install: h.Install) -> bool:
    """Whether the install imports ftransfer from outside site-packages."""
    where = install.python_output("import ftransfer; print(ftransfer.__file__)")
    return "site-packages" not in where


Cases = dict[str, Callable[[], float]]
Keyed = dict[tuple[str, str], Callable[[], float]]
SINGLE = ("python -c pass", "ftransfer --version", "bare: connect, send 1 byte", "get: 1st byte")
MANY = ("python -c pass", "ftransfer --version", "ftransfer get, 4 KiB")


def single_cases(install: h.Install, listener: FirstByte, out: Path) -> Cases:
    get = [*install.cli, "get", "-q", f"127.0.0.1:{listener.port}/small.bin", str(out)]
    return {
        SINGLE[0]: lambda: wall([install.python, "-c", "pass"]),
        SINGLE[1]: lambda: wall([*install.cli, "--version"]),
        SINGLE[2]: lambda: listener.seconds([install.python, "-c", FLOOR, str(listener.port)]),
        SINGLE[3]: lambda: listener.seconds(get),
    }


def many_cases(install: h.Install, server: h.ServerProcess, out: Path, clients: int) -> Cases:
    def gets() -> float:
        out.mkdir()
        try:
            remote = server.remote("small.bin")
            return concurrently(
                [[*install.cli, "get", "-q", remote, str(out / f"f{i}")] for i in range(clients)]
            )
        finally:
            for path in out.iterdir():
                path.unlink()
            out.rmdir()

    return {
        MANY[0]: lambda: concurrently([[install.python, "-c", "pass"]] * clients),
        MANY[1]: lambda: concurrently([[*install.cli, "--version"]] * clients),
        MANY[2]: gets,
    }


def keyed(install: h.Install, cases: Cases) -> Keyed:
    return {(install.label, name): case for name, case in cases.items()}


def rows(
    found: list[h.Install],
    names: Sequence[str],
    results: dict[tuple[str, str], list[float]],
    unit: float,
    digits: int,
    targets: dict[str, tuple[str, Callable[[float, float], bool]]],
) -> list[list[str]]:
    """One row per install and case: median, the per-round ratio to the install's
    ``python -c pass``, the target (if there are any), and the ratio to the baseline
    install."""
    out = []
    for install in found:
        bare = results[install.label, names[0]]
        for name in names:
            values = results[install.label, name]
            cells = [install.label, name, f"{h.median(values) * unit:.{digits}f}"]
            cells.append(h.ratio(h.per_round(values, bare)))
            target = targets.get(name)
            if target is None and targets:
                cells.append("")
            elif target is not None:
                met = target[1](h.median(values) * unit, h.median(h.per_round(values, bare)))
                cells.append(f"{target[0]}: {'met' if met else 'missed'}")
            if len(found) > 1:
                base = results[found[-1].label, name]
                cells.append(h.ratio(h.per_round(values, base)))
            out.append(cells)
    return out


def main() -> None:
    parser = h.parser(__doc__, baseline=True)
    parser.add_argument("--rounds", type=int, default=20, help="single-process rounds")
    parser.add_argument("--concurrent-rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=100, help="processes at once")
    parser.add_argument("--dir", default="/dev/shm", help="where files go (default tmpfs)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.concurrent_rounds, args.clients = 3, 1, 20
    found = h.installs(args)
    notes = [f"{i.label}: {i.python}" + (" (editable)" * editable(i)) for i in found]
    print(f"{h.machine()}; " + "; ".join(notes), flush=True)
    with h.work_dir(args.dir, "ftbench-startup-") as work:
        single(found, work, args)
        many(found, work, args)
    print(f"after: {h.machine()}")


def single(found: list[h.Install], work: Path, args: argparse.Namespace) -> None:
    listener = FirstByte()
    try:
        cases: Keyed = {}
        for install in found:
            cases |= keyed(install, single_cases(install, listener, work / "never-written"))
        results = h.interleaved(cases, args.rounds, warmup=1)
    finally:
        listener.close()
    targets = {
        SINGLE[1]: (f"<= {VERSION_TARGET:g}x", lambda _ms, r: r <= VERSION_TARGET),
        SINGLE[3]: (f"< {FIRST_BYTE_TARGET_MS:g} ms", lambda ms, _r: ms < FIRST_BYTE_TARGET_MS),
    }
    headers = ["install", "one process", "median ms", "vs python -c pass", "target"]
    h.print_table(
        f"One process, spawn to exit (1st byte: spawn to the kernel's receive timestamp); "
        f"medians of {args.rounds} interleaved rounds; ratios: median (range) of "
        "per-round ratios",
        headers + ["vs " + found[-1].label] * (len(found) > 1),
        rows(found, SINGLE, results, 1000, 1, targets),
    )


def many(found: list[h.Install], work: Path, args: argparse.Namespace) -> None:
    cases: Keyed = {}
    servers: list[h.ServerProcess] = []
    try:
        for install in found:
            root = work / f"root-{len(servers)}"
            root.mkdir()
            (root / "small.bin").write_bytes(os.urandom(SMALL_BYTES))
            limits = ("--no-udp", "--max-connections", "512", "--max-per-address", "512")
            server = h.ServerProcess(install, root, *limits)
            servers.append(server)
            cases |= keyed(install, many_cases(install, server, work / "out", args.clients))
        results = h.interleaved(cases, args.concurrent_rounds, warmup=1)
    finally:
        for server in servers:
            server.stop()
    headers = ["install", f"{args.clients} at once", "median s", "vs python -c pass"]
    h.print_table(
        f"{args.clients} concurrent processes, first spawn to last exit, {os.cpu_count()} "
        f"CPUs; medians of {args.concurrent_rounds} interleaved rounds",
        headers + ["vs " + found[-1].label] * (len(found) > 1),
        rows(found, MANY, results, 1, 2, {}),
    )


if __name__ == "__main__":
    main()
