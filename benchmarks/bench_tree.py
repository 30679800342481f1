"""Tree benchmark: put -r and get -r against the rsync daemon, in the same run.

    python benchmarks/bench_tree.py [--python PY] [--dir /dev/shm] [--files 1000]
                                    [--runs 5] [--large-mib 0] [--quick]

Each case is one whole command, as a user waits for it (interpreter start, TLS
handshake, every file verified and committed with fsync on the server), on a
directory of N x 4 KiB files:

- ``ftransfer put -r DIR host/new`` and ``ftransfer get -r host/DIR new``, with TLS
  (the default) and with ``--insecure`` (plaintext, as rsync's daemon is);
- ``rsync -a DIR/ rsync://host/module/new/`` and back, against ``rsync --daemon``
  on the same tmpfs.

Rounds are interleaved (one of each case per round, order rotating) and each
ratio is taken within a round: files/s of ftransfer over files/s of rsync's
daemon in the same direction. ``--large-mib N`` adds ``get -r`` of a directory
holding one N MiB file against a plain ``get`` of that file.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import _harness as h
from bench_tcp import make_small_files, rsync_daemon


def tree_cases(
    install: h.Install, server: h.ServerProcess, work: Path, count: int, port: int
) -> dict[str, Callable[[], float]]:
    """files/s of each way of moving the tree; every run into a new name."""
    runs = itertools.count()
    cli = install.cli

    def new_local() -> Path:
        return work / f"got{next(runs)}"

    def ftransfer_put(extra: list[str]) -> Callable[[], float]:
        def run() -> float:
            remote = server.remote(f"up{next(runs)}")
            return count / h.timed([*cli, "put", "-r", "-q", *extra, str(work / "tree"), remote])

        return run

    def ftransfer_get(extra: list[str]) -> Callable[[], float]:
        def run() -> float:
            target = new_local()
            took = h.timed([*cli, "get", "-r", "-q", *extra, server.remote("tree"), str(target)])
            shutil.rmtree(target)
            return count / took

        return run

    def rsync_put() -> float:
        url = f"rsync://127.0.0.1:{port}/bench/up{next(runs)}/"
        return count / h.timed(["rsync", "-a", f"{work / 'tree'}/", url])

    def rsync_get() -> float:
        target = new_local()
        took = h.timed(["rsync", "-a", f"rsync://127.0.0.1:{port}/bench/tree/", f"{target}/"])
        shutil.rmtree(target)
        return count / took

    return {
        "put -r, TLS": ftransfer_put([]),
        "put -r, --insecure": ftransfer_put(["--insecure"]),
        "rsync daemon, put": rsync_put,
        "get -r, TLS": ftransfer_get([]),
        "get -r, --insecure": ftransfer_get(["--insecure"]),
        "rsync daemon, get": rsync_get,
    }


def bench_tree(install: h.Install, work: Path, count: int, runs: int) -> dict[str, list[float]]:
    make_small_files(work / "tree", count)
    for name in ("served-tls", "served-plain"):
        (work / name).mkdir()
    with contextlib.ExitStack() as stack:
        secure = stack.enter_context(h.ServerProcess(install, work / "served-tls"))
        plain = stack.enter_context(h.ServerProcess(install, work / "served-plain", "--insecure"))
        port = stack.enter_context(rsync_daemon(work))
        for root in (secure.root, plain.root, work / "rsync-root"):
            shutil.copytree(work / "tree", root / "tree")
        cases = tree_cases(install, secure, work, count, port)
        insecure = tree_cases(install, plain, work, count, port)
        for name in ("put -r, --insecure", "get -r, --insecure"):
            cases[name] = insecure[name]
        return h.interleaved(cases, runs)


def bench_large(install: h.Install, work: Path, mib: int, runs: int) -> dict[str, list[float]]:
    """Seconds of get -r of a directory with one large file, and of a plain get."""
    (work / "served-large").mkdir()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(h.ServerProcess(install, work / "served-large"))
        (server.root / "big").mkdir()
        h.make_file(server.root / "big" / "one.bin", mib * h.MIB)
        out = work / "large-out"

        def fetch(args: list[str]) -> Callable[[], float]:
            def run() -> float:
                took = h.timed([*install.cli, *args, str(out)])
                shutil.rmtree(out) if out.is_dir() else out.unlink()
                return took

            return run

        cases = {
            "get": fetch(["get", "-q", server.remote("big/one.bin")]),
            "get -r": fetch(["get", "-r", "-q", server.remote("big")]),
        }
        return h.interleaved(cases, runs, before=lambda: h.settle(2 * mib * h.MIB))


def report(
    results: dict[str, list[float]],
    large: dict[str, list[float]] | None,
    args: argparse.Namespace,
) -> None:
    rows = []
    for name, values in results.items():
        way = "put" if "put" in name else "get"
        baseline = results[f"rsync daemon, {way}"]
        rows.append([name, f"{h.median(values):,.0f}", h.ratio(h.per_round(values, baseline))])
    h.print_table(
        f"{args.files} x 4 KiB files, whole commands, on "
        f"{args.fs}, medians of {args.runs} interleaved rounds",
        ["what", "files/s", "vs rsync daemon, same way (median, range)"],
        rows,
    )
    if large:
        plain = large["get"]
        h.print_table(
            f"One {args.large_mib} MiB file: get -r of its directory against get",
            ["what", "median s", "vs get (median, range)"],
            [
                [name, f"{h.median(values):.3f}", h.ratio(h.per_round(plain, values))]
                for name, values in large.items()
            ],
        )


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--dir", default="/dev/shm", help="where files go (default tmpfs)")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5, help="rounds (after one warm-up)")
    parser.add_argument("--large-mib", type=int, default=0, help="also get -r of one such file")
    args = parser.parse_args()
    if args.quick:
        args.files, args.runs, args.large_mib = 100, 2, min(args.large_mib, 64)
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is not installed (apt-get install rsync): it is the baseline")
    (install,) = h.installs(args)
    print(f"{h.machine()}; {install.label}: {install.python}", flush=True)
    with h.work_dir(args.dir, "ftbench-tree-") as work:
        os.environ.setdefault("XDG_CONFIG_HOME", str(work / "config"))  # its own known_hosts
        results = bench_tree(install, work, args.files, args.runs)
        large = bench_large(install, work, args.large_mib, args.runs) if args.large_mib else None
        args.fs = h.filesystem(work)
    report(results, large, args)


if __name__ == "__main__":
    main()
