"""Rate-limit benchmark: does a transfer keep to its limit over ten seconds?

    python benchmarks/bench_rate.py [--python PY] [--dir /dev/shm] [--rate 20M]
                                    [--seconds 10] [--runs 3] [--quick]

For TCP and UDP, put and get, a file of ``rate * seconds`` bytes moves under the
client's ``--limit-rate`` and under a server's ``--max-rate`` (and for a second
server ``--max-total-rate``). The table shows the rate over the transfer as the
client's ``--json`` reports it (request to verified commit) and its error
against the limit: the issue's target is within 5 % over 10 s. Medians of the
runs, each case once per round.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path

import _harness as h

MIB = 1 << 20


def parse_rate(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def cases(
    install: h.Install,
    servers: dict[str, h.ServerProcess],
    source: Path,
    work: Path,
    rate_text: str,
) -> dict[str, Callable[[], float]]:
    """Seconds of each transfer (the client's --json ``seconds``)."""
    runs = itertools.count()
    found: dict[str, Callable[[], float]] = {}
    for (who, server), transport, way in itertools.product(
        servers.items(), ("tcp", "udp"), ("put", "get")
    ):
        scheme = "" if transport == "tcp" else "udp"
        limit = ["--limit-rate", rate_text] if who == "client --limit-rate" else []

        def run(
            server: h.ServerProcess = server,
            scheme: str = scheme,
            way: str = way,
            limit: list[str] = limit,
        ) -> float:
            name = f"f{next(runs)}"
            if way == "put":
                command = ["put", "--json", *limit, str(source), server.remote(name, scheme)]
            else:
                _copy(source, server.root / name)
                command = ["get", "--json", *limit, server.remote(name, scheme), str(work / name)]
            [record] = h.run_measured([*install.cli, *command]).records()
            for leftover in (server.root / name, work / name):
                leftover.unlink(missing_ok=True)
            return h.seconds_of(record)

        found[f"{transport} {way}, {who}"] = run
    return found


def _copy(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as out:
        while chunk := src.read(8 * MIB):
            out.write(chunk)


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--dir", default="/dev/shm", help="where files go (default tmpfs)")
    parser.add_argument("--rate", default="20M", help="the limit (binary K/M/G, as curl)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runs = 2.0, 1
    rate = parse_rate(args.rate)
    size = int(rate * args.seconds)
    (install,) = h.installs(args)
    print(f"{h.machine()}; {install.label}: {install.python}", flush=True)
    with h.work_dir(args.dir, "ftbench-rate-") as work, contextlib.ExitStack() as stack:
        source = work / "source.bin"
        h.make_file(source, size)
        servers = {}
        for who, extra in (
            ("client --limit-rate", []),
            ("server --max-rate", ["--max-rate", args.rate]),
            ("server --max-total-rate", ["--max-total-rate", args.rate]),
        ):
            root = work / who.split()[-1].strip("-")
            root.mkdir()
            servers[who] = stack.enter_context(h.ServerProcess(install, root, *extra))
        results = h.interleaved(
            cases(install, servers, source, work, args.rate), args.runs, warmup=0
        )
    rows = []
    for name, seconds in results.items():
        measured = size / h.median(seconds)
        error = (measured - rate) / rate * 100
        rows.append([name, f"{h.median(seconds):.2f}", f"{measured / MIB:.2f}", f"{error:+.1f} %"])
    h.print_table(
        f"{size / MIB:.0f} MiB under a limit of {args.rate}B/s ({rate / MIB:.1f} MiB/s, "
        f"{args.seconds:g} s at the limit), medians of {args.runs} rounds",
        ["what", "seconds", "MiB/s", "vs the limit"],
        rows,
    )


if __name__ == "__main__":
    main()
