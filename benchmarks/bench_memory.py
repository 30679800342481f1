"""Server memory under connection churn: RSS after many connections, and with many open.

    python benchmarks/bench_memory.py [--python PY] [--baseline-python PY]
                                      [--churn 20000] [--at-once 16] [--held 250]
                                      [--stat-name-bytes 0] [--quick]

The server (``ftransfer serve --no-udp``, raised connection caps) is a subprocess; its
resident set is ``VmRSS`` of ``/proc/PID/status``, its peak ``VmHWM``. In order:

- idle: just started, and after one batch of connections (everything a connection
  needs allocated once: the reference the other rows are compared with);
- after ``--churn`` connections, ``--at-once`` open at a time, each sending HELLO,
  reading the answer and closing (a checkpoint after 2,000 too, the figure the
  issue started from);
- while ``--held`` connections are open and idle after their HELLO;
- after those have closed.

``--stat-name-bytes N`` makes each connection also ask for a STAT of an N-byte name
(refused), so that the server really reads into, and touches, a receive buffer per
connection, as tests/test_server_churn.py does. Before a figure is read, the server
must have let go of the connections just closed: HELLO round trips are made until
its open descriptors are back to the idle count (it handles closes in order with
them), which also shows that no descriptor leaked.

Memory is not timing, so the installs (``--python``, and ``--baseline-python``, e.g.
the 0.1 release's venv) run one after the other. The connections are made with this
interpreter's ``ftransfer.proto.tcp`` (HELLO offers versions 1 to 2, so a 0.1 server
answers too).
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from pathlib import Path

import _harness as h

from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role

ISSUE_CHECKPOINT = 2000
"""Connections after which the issue first measured the growth (26.6 -> 240 MiB)."""
MAX_PROBES = 1000
"""HELLO round trips allowed for the server to release closed connections."""
SOCKET_TIMEOUT_S = 30.0


def served(sock: socket.socket, stat_name: str) -> None:
    """HELLO (and a STAT of ``stat_name``), then read until the last answer."""
    conn = Connection(Role.CLIENT)
    requests: list[ev.Event] = [ev.HelloOffered(min_version=1, max_version=2)]
    if stat_name:
        requests.append(ev.StatRequested(path=stat_name))
    sock.sendall(b"".join(conn.send(r) for r in requests))
    while conn.pending_requests:
        data = sock.recv(1 << 16)
        if not data:
            raise RuntimeError("the server closed before answering")
        conn.receive_data(data)
        while not isinstance(event := conn.next_event(), ev.NeedData):
            if not isinstance(event, ev.HelloAccepted | ev.Failed):
                raise RuntimeError(f"unexpected answer {event}")


def opened(port: int, count: int, stat_name: str) -> list[socket.socket]:
    socks = [
        socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
        for _ in range(count)
    ]
    for sock in socks:
        served(sock, stat_name)
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def settle(server: h.ServerProcess, idle_descriptors: int) -> None:
    """HELLO round trips until the server holds no more descriptors than when idle."""
    for _ in range(MAX_PROBES):
        with socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_S) as s:
            served(s, "")
        if server.descriptors() <= idle_descriptors:
            return
    raise RuntimeError("the server kept descriptors of closed connections")


def checkpoints(churn: int) -> list[int]:
    return sorted({n for n in (ISSUE_CHECKPOINT, churn) if n <= churn})


def phases(install: h.Install, root: Path, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """(phase, RSS KiB) in order, the last one the peak."""
    caps = str(args.held + 50)
    stat_name = "x" * args.stat_name_bytes
    limits = ("--no-udp", "--max-connections", caps, "--max-per-address", caps)
    with h.ServerProcess(install, root, *limits) as server:
        idle_descriptors = server.descriptors()
        yield "idle, just started", server.status_kib("VmRSS")
        close_all(opened(server.port, args.at_once, stat_name))
        settle(server, idle_descriptors)
        yield "idle, after one batch (the reference)", server.status_kib("VmRSS")
        done = args.at_once
        for mark in checkpoints(args.churn):
            while done < mark:
                batch = min(args.at_once, mark - done)
                close_all(opened(server.port, batch, stat_name))
                done += batch
            settle(server, idle_descriptors)
            h.progress(f"{install.label}: {done:,} connections")
            yield f"after {mark:,} churned connections", server.status_kib("VmRSS")
        held = opened(server.port, args.held, stat_name)
        yield f"while {args.held} idle connections are open", server.status_kib("VmRSS")
        close_all(held)
        settle(server, idle_descriptors)
        yield f"after the {args.held} have closed", server.status_kib("VmRSS")
        yield "peak (VmHWM)", server.status_kib("VmHWM")


def main() -> None:
    parser = h.parser(__doc__, baseline=True)
    parser.add_argument("--churn", type=int, default=20_000, help="connections, in all")
    parser.add_argument("--at-once", type=int, default=16, help="churned connections open at once")
    parser.add_argument("--held", type=int, default=250, help="idle connections held open")
    parser.add_argument(
        "--stat-name-bytes",
        type=int,
        default=0,
        help="also STAT a name this long on each connection (0: HELLO only)",
    )
    parser.add_argument("--dir", default="/dev/shm", help="the served root goes here")
    args = parser.parse_args()
    if args.quick:
        args.churn, args.held = 2000, 50
    found = h.installs(args)
    print(h.machine(), flush=True)
    columns: dict[str, dict[str, int]] = {}
    with h.work_dir(args.dir, "ftbench-memory-") as work:
        for install in found:
            columns[install.label] = dict(phases(install, work, args))
    report(columns, args)


def report(columns: dict[str, dict[str, int]], args: argparse.Namespace) -> None:
    reference = "idle, after one batch (the reference)"
    headers = ["server"]
    for label in columns:
        headers += [f"{label} RSS MiB", "vs idle"]
    rows = []
    for phase in next(iter(columns.values())):
        cells = [phase]
        for figures in columns.values():
            kib, idle = figures[phase], figures[reference]
            cells.append(f"{kib / 1024:.1f}")
            cells.append(f"{(kib - idle) / 1024:+.1f} MiB ({kib / idle:.2f}x)")
        rows.append(cells)
    what = "HELLO" + (
        f" + STAT of a {args.stat_name_bytes:,}-byte name" * bool(args.stat_name_bytes)
    )
    h.print_table(
        f"Server RSS under churn: {what}, then close, {args.at_once} connections at a time; "
        f"then {args.held} held open (MiB = 2^20 bytes)",
        headers,
        rows,
    )


if __name__ == "__main__":
    main()
