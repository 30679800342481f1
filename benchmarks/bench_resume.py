"""Resume benchmark: a large put and get killed at half way, then run again.

For each tool, each round: the first run is killed once the destination holds
half the file (ftransfer: SIGKILL, the harshest cut; rsync: SIGINT, since
``rsync --partial`` keeps its partial only when it can clean up), then the same
command runs again and is timed whole. What the table shows, for that second run:

- **on the wire**: bytes that crossed the loopback interface while it ran (the
  ``lo`` counters of /proc/net/dev: every byte of every protocol, TLS records,
  checksums and acknowledgements included), as a share of the file's size;
- **first new byte**: from the command's start until the destination's partial
  file grew past what it held (ftransfer: the partial's size passing the offset
  its journal allowed, polled every millisecond; whole command, start-up and
  handshake included). rsync first re-reads the partial on the receiver and the
  source on the sender to find the matching blocks, and writes a new temporary
  file from both, so its "first new byte" is not observable the same way: its
  column shows the whole second run instead;
- **second run**: the whole command's wall time.

- **missing after the cut**: what the destination lacked (ftransfer: the file
  less the whole chunks its journal holds; rsync: less the partial it kept), and
  **wire / missing**, the second run's bytes on the wire over that (1.0: not a
  byte more than needed; UDP's 1,400-byte datagrams carry about 4 % of headers,
  sealing and acknowledgements, counted on lo with their IP headers).

The target of the workflow issue: a resumed run moves at most 52 % of the bytes
and reaches its first new byte within 1 s. rsync runs against its daemon
(plaintext), ftransfer over TLS (its default) on TCP, and sealed UDP.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import _harness as h
from bench_tcp import rsync_daemon


def lo_bytes() -> int:
    """Bytes received on the loopback interface so far (each byte sent on lo is
    received once)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    raise RuntimeError("no lo interface in /proc/net/dev")


def partials(directory: Path, prefix: str) -> list[Path]:
    return [
        p for p in directory.iterdir() if p.name.startswith(prefix) and not p.name.endswith(".j")
    ]


def size_of(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


def journaled(directory: Path) -> int:
    """The offset an ftransfer journal in ``directory`` allows (whole chunks)."""
    for journal in directory.glob(".ftransfer-part-*.j"):
        raw = journal.read_bytes()
        if b"\n" in raw:
            return (len(raw) - raw.index(b"\n") - 1) // 24 * (8 << 20)
    return 0


SETTLED_S = 0.3
"""After the cut, the receiver may still be writing what was in flight (a server
reads a dead client's socket to its end): the second run starts once the partial
has not changed for this long."""


def cut_at_half(command: list[str], watch: Callable[[], int], size: int, sig: int) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while watch() < size // 2:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[:3]} ended before half way")
            time.sleep(0.001)
    finally:
        proc.send_signal(sig)
        proc.wait()
    last, since = watch(), time.monotonic()
    while time.monotonic() - since < SETTLED_S:
        time.sleep(0.01)
        now = watch()
        if now != last:
            last, since = now, time.monotonic()


def random_file(path: Path, size: int) -> None:
    """Random bytes throughout (rsync's delta pass would match a repeated block)."""
    with open(path, "wb") as out:
        for _ in range(size // (64 * h.MIB)):
            out.write(os.urandom(64 * h.MIB))
        out.write(os.urandom(size % (64 * h.MIB)))


class Resumed:
    """The second run: bytes on the wire, first new byte, wall time; and what the
    destination was missing after the cut."""

    def __init__(self, moved: int, first_s: float | None, wall_s: float) -> None:
        self.moved, self.first_s, self.wall_s = moved, first_s, wall_s
        self.missing = 0


def rerun(command: list[str], destination: Path, prefix: str, held: int) -> Resumed:
    """Run ``command`` again; watch the partial in ``destination`` grow past ``held``."""
    watched = partials(destination, prefix)
    before = {p: p.stat().st_mtime_ns for p in watched}
    wire = lo_bytes()
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None and first is None and prefix.startswith(".ftransfer"):
        for path, mtime in before.items():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime_ns != mtime and st.st_size > held:
                first = time.perf_counter() - start
        time.sleep(0.001)
    _out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{command[:3]} failed: {err.decode(errors='replace')}")
    return Resumed(lo_bytes() - wire, first, wall)


def ftransfer_case(
    install: h.Install, server: h.ServerProcess, work: Path, size: int, way: str, scheme: str
) -> Callable[[], Resumed]:
    local = work / "local"

    def run() -> Resumed:
        out = local / "back.bin"
        for stale in local.glob(".ftransfer-part-*"):
            stale.unlink()
        (server.root / "up.bin").unlink(missing_ok=True)
        if way == "put":
            remote = server.remote("up.bin", scheme)
            command = [*install.cli, "put", "-q", str(work / "big.bin"), remote]
            where = server.root
        else:
            out.unlink(missing_ok=True)
            remote = server.remote("big.bin", scheme)
            command = [*install.cli, "get", "-q", remote, str(out)]
            where = local
        cut_at_half(
            command, lambda: size_of(partials(where, ".ftransfer-part-")), size, signal.SIGKILL
        )
        held = journaled(where)
        result = rerun(command, where, ".ftransfer-part-", held)
        result.missing = size - held
        check = work / "big.bin"
        done = server.root / "up.bin" if way == "put" else out
        if done.stat().st_size != check.stat().st_size:
            raise RuntimeError("the resumed file has the wrong size")
        return result

    return run


def rsync_case(work: Path, port: int, size: int, way: str) -> Callable[[], Resumed]:
    module = work / "rsync-root"
    local = work / "rsync-local"

    def run() -> Resumed:
        for path in list(module.glob("*up.bin*")) + list(local.glob("*")):
            path.unlink()
        if way == "put":
            command = [
                "rsync",
                "--partial",
                str(work / "big.bin"),
                f"rsync://127.0.0.1:{port}/bench/up.bin",
            ]
            where, name = module, "up.bin"
        else:
            command = [
                "rsync",
                "--partial",
                f"rsync://127.0.0.1:{port}/bench/big.bin",
                str(local / "back.bin"),
            ]
            where, name = local, "back.bin"

        def grown() -> int:
            return size_of([p for p in where.iterdir() if name in p.name])

        cut_at_half(command, grown, size, signal.SIGINT)
        kept = grown()
        if not size // 4 <= kept < size * 9 // 10:
            raise RuntimeError(
                f"rsync --partial kept {kept} of {size} bytes: not a cut at half way"
            )
        result = rerun(command, where, name, kept)
        result.missing = size - kept
        return result

    return run


def bench(install: h.Install, work: Path, mib: int, runs: int) -> dict[str, list[Resumed]]:
    size = mib * h.MIB
    random_file(work / "big.bin", size)
    (work / "served").mkdir()
    (work / "local").mkdir()
    (work / "rsync-local").mkdir()
    results: dict[str, list[Resumed]] = {}
    with h.ServerProcess(install, work / "served") as server, rsync_daemon(work) as port:
        os.link(work / "big.bin", server.root / "big.bin")
        os.link(work / "big.bin", work / "rsync-root" / "big.bin")
        cases = {
            "ftransfer put (TCP, TLS)": ftransfer_case(install, server, work, size, "put", ""),
            "ftransfer get (TCP, TLS)": ftransfer_case(install, server, work, size, "get", ""),
            "ftransfer put (UDP, sealed)": ftransfer_case(
                install, server, work, size, "put", "udp"
            ),
            "ftransfer get (UDP, sealed)": ftransfer_case(
                install, server, work, size, "get", "udp"
            ),
            "rsync --partial put (daemon)": rsync_case(work, port, size, "put"),
            "rsync --partial get (daemon)": rsync_case(work, port, size, "get"),
        }
        for _round in range(runs):
            for name, case in cases.items():
                got = case()
                results.setdefault(name, []).append(got)
                print(f"{name}: {vars(got)}", flush=True)
    return results


def report(results: dict[str, list[Resumed]], args: argparse.Namespace) -> None:
    size = args.mib * h.MIB
    rows = []
    for name, values in results.items():
        share = h.median([v.moved / size for v in values])
        missing = h.median([v.missing / size for v in values])
        per_missing = h.median([v.moved / max(v.missing, 1) for v in values])
        firsts = [v.first_s for v in values if v.first_s is not None]
        first = f"{h.median(firsts):.3f} s" if firsts else "n/a"
        worst = f"{max(v.moved for v in values) / size:.1%}"
        wall = f"{h.median([v.wall_s for v in values]):.2f} s"
        rows.append(
            [
                name,
                f"{missing:.1%}",
                f"{share:.1%} (worst {worst})",
                f"{per_missing:.3f}",
                first,
                wall,
            ]
        )
    h.print_table(
        f"A {args.mib} MiB file cut at half way, then run again: the second run "
        f"(medians of {args.runs} rounds, {args.fs})",
        [
            "what",
            "missing after the cut",
            "on the wire, of the file",
            "wire / missing",
            "first new byte",
            "second run",
        ],
        rows,
    )


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--dir", default="/dev/shm", help="where files go (default tmpfs)")
    parser.add_argument("--mib", type=int, default=2048, help="file size (default 2 GiB)")
    parser.add_argument("--runs", type=int, default=3, help="rounds")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.runs = 256, 1
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is not installed (apt-get install rsync): it is the comparison")
    install = h.Install(args.python)
    with h.work_dir(args.dir, "ftbench-resume-") as work:
        args.fs = h.filesystem(work)
        report(bench(install, work, args.mib, args.runs), args)


if __name__ == "__main__":
    main()
