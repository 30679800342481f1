"""Emulated-WAN benchmark: UDP mode vs TCP mode vs TFTP over one impaired path.

    python benchmarks/bench_wan.py [--python PY] [--rate 100] [--rtt 40]
                                   [--cases 0,1,5,10,10:5] [--tools udp,cubic,bbr,tftp]
                                   [--size-mib 32] [--runs 3] [--limit 20]
                                   [--plot benchmarks/wan.png] [--quick]

Needs root (network namespaces and TUN devices), iproute2, and for the TFTP rows
Debian's atftp/atftpd and curl. The kernel here has no netem, so the path is made
in user space: a forwarder process opens two TUN devices, moves one into each of
two fresh network namespaces (10.201.0.1/30 and 10.201.0.2/30), and copies IP
packets between them through ``ftransfer.testing.netem.ImpairedPath`` -- the relay's
and the simulator's model -- so TCP and UDP cross the same link: ``--rate`` Mbit/s
with a drop-tail queue of 50 ms, ``--rtt`` ms of delay, and per row of
``--cases`` a random loss in each direction, in percent, optionally with jitter:
``10:5`` is 10 % loss plus a uniform 0-5 ms extra delay drawn for each packet
independently (the relay's ``--jitter``), which reorders up to ~40 packets deep at
100 Mbit/s. ``--tools`` picks the columns. Everything created is removed at the
end, also on failure.

The TCP mode is measured twice, with CUBIC (Linux's default, and most of the
Internet's) and with BBR (this machine's default: ``net.ipv4.tcp_congestion_control``
is per namespace, so each run sets it in both). UDP and TCP cells are the median of
``--runs`` transfers of ``--size-mib``; the TFTP cells are single runs. A transfer
that exceeds ``--limit`` seconds is reported as such (a cell whose first run times
out is not repeated); the default of 20 s keeps the whole run to about seven minutes,
since lockstep TFTP and CUBIC under loss always hit it (the README's table used
``--size-mib 64 --limit 45``). Goodput is verified payload bytes per second,
start-up and handshake included, as a percentage of the link rate too, so a small
``--size-mib`` lowers it: the handshake and BBR's start-up are a larger share.

The row "10 % loss + 5 ms jitter" (``10:5``, in the default cases) is issue 10's
item 6: the UDP mode must keep at least 70 % of the link there; the script says
whether it did.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import heapq
import importlib
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import _harness as h

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
CLIENT_IP, SERVER_IP = "10.201.0.1", "10.201.0.2"
TOOLS = ("udp", "cubic", "bbr", "auto", "tftp")
"""``--tools``: ftransfer UDP, ftransfer TCP with CUBIC and with BBR, ``--transport
auto`` (with CUBIC, the Internet's default, should it take TCP), the TFTP pair."""
AUTO_TARGET = 0.90
"""``auto`` within 10 % of the better of UDP and TCP on every row (issue 14)."""
FTRANSFER_PORT, TFTP_PORT = 9021, 6969
JITTER_TARGET = 0.70
"""UDP goodput at 10 % loss + 5 ms jitter, as a fraction of the link (issue 10.6)."""
ATFTPD_START_S = 0.5
"""atftpd has no readiness signal, and it binds inside a namespace we cannot probe."""


@dataclass(frozen=True)
class Case:
    """One row: random loss in each direction (a fraction) and jitter (ms)."""

    loss: float
    jitter_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Case:
        """``10`` is 10 % loss; ``10:5`` adds up to 5 ms of jitter per packet."""
        loss, _, jitter = text.partition(":")
        return cls(float(loss) / 100, float(jitter or 0))

    @property
    def label(self) -> str:
        """``10 % loss + 5 ms jitter``; ``0 % loss``."""
        jitter = f" + {self.jitter_ms:g} ms jitter" if self.jitter_ms else ""
        return f"{self.loss * 100:g} % loss{jitter}"


# ---- the forwarder (runs as root in its own process) ----------------------------------


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def forward(
    ns_a: str, ns_b: str, rate_mbit: float, rtt_ms: float, loss: float, jitter_ms: float, seed: int
) -> None:
    from ftransfer.testing.netem import ImpairedPath, Impairment

    fds = {}
    for ns, dev, address in (
        (ns_a, f"{ns_a}t", f"{CLIENT_IP}/30"),
        (ns_b, f"{ns_b}t", f"{SERVER_IP}/30"),
    ):
        fds[ns] = _open_tun(dev)
        _ip("netns", "add", ns)
        _ip("link", "set", dev, "netns", ns)
        _ip("-n", ns, "addr", "add", address, "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    impairment = Impairment(
        loss=loss,
        delay_s=rtt_ms / 2000,
        jitter_s=jitter_ms / 1000,
        rate_bytes_per_s=rate_mbit * 1e6 / 8,
    )
    rng = random.Random(seed)
    a, b = fds[ns_a], fds[ns_b]
    paths = {a: (ImpairedPath(impairment, rng), b), b: (ImpairedPath(impairment, rng), a)}
    heap: list[tuple[float, int, int, bytes]] = []
    order = 0
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    print("ready", flush=True)
    while not stop:
        timeout = max(heap[0][0] - time.monotonic(), 0.0) if heap else 0.2
        try:
            readable, _, _ = select.select([a, b], [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            path, out = paths[fd]
            while True:
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                for leave, copy in path.admit(packet, now):
                    order += 1
                    heapq.heappush(heap, (leave, order, out, copy))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _leave, _order, out, packet = heapq.heappop(heap)
            with contextlib.suppress(OSError):
                os.write(out, packet)
    for ns in (ns_a, ns_b):
        subprocess.run(["ip", "netns", "del", ns], check=False)


class WanLink:
    """Context manager around the forwarder subprocess."""

    def __init__(self, rate_mbit: float, rtt_ms: float, case: Case, seed: int) -> None:
        tag = f"ftw{os.getpid() % 10000}"
        self.ns_client, self.ns_server = f"{tag}a", f"{tag}b"
        self.args = [str(rate_mbit), str(rtt_ms), str(case.loss), str(case.jitter_ms), str(seed)]

    def __enter__(self) -> WanLink:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--forward", self.ns_client, self.ns_server, *self.args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the emulated link did not come up (root and iproute2 needed)")
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        for ns in (self.ns_client, self.ns_server):  # in case the forwarder died early
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def set_tcp_cc(self, name: str) -> None:
        """A namespace may only default to an algorithm the host allows (Linux's
        tcp_set_default_congestion_control): see ``allowing``."""
        for ns in (self.ns_client, self.ns_server):
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-q",
                    "-w",
                    f"net.ipv4.tcp_congestion_control={name}",
                ],
                check=True,
            )

    @staticmethod
    def inside(ns: str) -> list[str]:
        """The prefix that runs a command in namespace ``ns``."""
        return ["ip", "netns", "exec", ns]


ALLOWED = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


@contextlib.contextmanager
def allowing(names: list[str]) -> Iterator[None]:
    """Add ``names`` to the host's allowed TCP congestion controls for the run, and
    put the list back afterwards (this host allows only "reno bbr")."""
    before = ALLOWED.read_text().split()
    wanted = before + [n for n in names if n not in before]
    if wanted != before:
        ALLOWED.write_text(" ".join(wanted))
    try:
        yield
    finally:
        if wanted != before:
            ALLOWED.write_text(" ".join(before))


# ---- the measurements ----------------------------------------------------------------


def _timed(link: WanLink, command: list[str], limit: float) -> float | None:
    """Wall seconds of a client command, or None if it failed or ran over ``limit``."""
    try:
        return h.timed([*link.inside(link.ns_client), *command], timeout=limit)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return None


def _ftransfer(install: h.Install, link: WanLink, args: list[str], limit: float) -> float | None:
    """The CLI's --json seconds, or None if it failed or ran over ``limit``."""
    try:
        return h.cli_seconds(install, args, link.inside(link.ns_client), timeout=limit)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return None


def _median(runs: int, once: Callable[[], float | None]) -> float | None:
    times = []
    for _ in range(runs):
        seconds = once()
        if seconds is None:
            return None  # over the limit: a lower bound, not worth repeating
        times.append(seconds)
    return h.median(times)


def measure(
    install: h.Install,
    link: WanLink,
    root: Path,
    work: Path,
    args: argparse.Namespace,
    tools: set[str],
) -> dict[str, float | None]:
    out = work / "out.bin"
    server_args = ["--host", SERVER_IP, "--port", str(FTRANSFER_PORT)]
    results: dict[str, float | None] = {}
    with contextlib.ExitStack() as stack:
        server = h.ServerProcess(install, root, *server_args, prefix=link.inside(link.ns_server))
        stack.enter_context(server)
        tftpd = None
        if "tftp" in tools and shutil.which("atftpd"):
            atftpd = h.atftpd(root, TFTP_PORT, host=SERVER_IP)
            tftpd = stack.enter_context(h.running([*link.inside(link.ns_server), *atftpd]))
            time.sleep(ATFTPD_START_S)
        ftransfer = functools.partial(_ftransfer, install, link, limit=args.limit)
        if "udp" in tools:
            get = ["get", server.remote("file.bin", "udp"), str(out)]
            results["ftransfer UDP"] = _median(args.runs, functools.partial(ftransfer, get))
        for cc in ("cubic", "bbr"):
            if cc not in tools:
                continue
            link.set_tcp_cc(cc)
            get = ["get", server.remote("file.bin"), str(out)]
            results[f"ftransfer TCP ({cc})"] = _median(args.runs, functools.partial(ftransfer, get))
        if "auto" in tools:
            link.set_tcp_cc("cubic")
            get = ["get", "--transport", "auto", server.remote("file.bin"), str(out)]
            results["ftransfer auto"] = _median(args.runs, functools.partial(ftransfer, get))
        if tftpd is not None:
            windowed = h.atftp_get(SERVER_IP, TFTP_PORT, "file.bin", out)
            results["TFTP windowsize 32 (atftp)"] = _timed(link, windowed, args.limit)
            lockstep = h.curl_tftp(SERVER_IP, TFTP_PORT, "file.bin", out)
            results["TFTP lockstep (curl)"] = _timed(link, lockstep, args.limit)
    return results


def plot(
    table: dict[Case, dict[str, float | None]],
    size: int,
    link_rate: float,
    args: argparse.Namespace,
) -> None:
    """Goodput against loss, for the rows without jitter (the x axis is the loss)."""
    table = {case: cells for case, cells in table.items() if not case.jitter_ms}
    if len(table) < 2:
        print("fewer than two rows without jitter: no plot", file=sys.stderr)
        return
    try:  # optional, and without type stubs: imported by name
        importlib.import_module("matplotlib").use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    losses = sorted(table, key=lambda case: case.loss)
    xs = [case.loss * 100 for case in losses]
    bound = size / args.limit / 1e6  # a transfer over the limit ran slower than this
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = list(next(iter(table.values())))
    for i, name in enumerate(names):
        values = [size / s / 1e6 if (s := table[loss][name]) else float("nan") for loss in losses]
        (line,) = ax.plot(xs, values, marker="o", label=name)
        # Over the time limit is not a measurement, only an upper bound: a hollow
        # triangle at the bound, in the series' colour, and no line through it,
        # nudged sideways so that several series' triangles stay visible.
        nudge = (i - (len(names) - 1) / 2) * 0.12
        over = [case.loss * 100 + nudge for case in losses if table[case][name] is None]
        ax.plot(
            over,
            [bound] * len(over),
            linestyle="none",
            marker="v",
            markersize=9,
            markerfacecolor="none",
            color=line.get_color(),
        )
    ax.axhline(link_rate / 1e6, color="grey", linestyle="--", linewidth=1, label="link rate")
    ax.plot(
        [],
        [],
        linestyle="none",
        marker="v",
        markerfacecolor="none",
        color="black",
        label=f"over {args.limit:g} s: goodput below this",
    )
    ax.set_ylim(0, link_rate / 1e6 * 1.1)
    ax.set_xlabel("random loss, each direction (%)")
    ax.set_ylabel("goodput (MB/s)")
    ax.set_title(
        f"Emulated WAN: {args.rate:g} Mbit/s, {args.rtt:g} ms RTT, 50 ms drop-tail "
        f"queue, {args.size_mib} MiB"
    )
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"plot written to {args.plot}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--forward":
        ns_a, ns_b, rate, rtt, loss, jitter, seed = sys.argv[2:9]
        forward(ns_a, ns_b, float(rate), float(rtt), float(loss), float(jitter), int(seed))
        return
    parser = h.parser(__doc__)
    parser.add_argument("--rate", type=float, default=100.0, help="Mbit/s")
    parser.add_argument("--rtt", type=float, default=40.0, help="ms")
    parser.add_argument(
        "--cases",
        default="0,1,5,10,10:5",
        help="rows: loss in percent, optionally :jitter in ms, comma-separated",
    )
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help=f"columns, comma-separated, of {', '.join(TOOLS)}"
    )
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3, help="median of this many (UDP, TCP)")
    parser.add_argument("--limit", type=float, default=20.0, help="seconds per transfer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.size_mib, args.runs, args.limit = "0,10:5", 4, 1, 15.0
    cases = [Case.parse(text) for text in args.cases.split(",")]
    tools = set(args.tools.split(","))
    if not tools <= set(TOOLS):
        parser.error(f"--tools: unknown {', '.join(sorted(tools - set(TOOLS)))}")
    if os.geteuid() != 0:
        parser.error("needs root: network namespaces and TUN devices")
    (install,) = h.installs(args)
    print(f"{h.machine()}; {install.label}: {install.python}", flush=True)
    size = args.size_mib * h.MIB
    link_rate = args.rate * 1e6 / 8
    table: dict[Case, dict[str, float | None]] = {}
    with h.work_dir("/dev/shm", "ftbench-wan-") as work:
        root = work / "root"
        root.mkdir(mode=0o755)
        h.make_file(root / "file.bin", size)
        (root / "file.bin").chmod(0o644)
        for case in cases:
            with allowing(["cubic", "bbr"]), WanLink(args.rate, args.rtt, case, args.seed) as link:
                table[case] = measure(install, link, root, work, args, tools)
            shown = (
                f"{k} {f'>{args.limit} s' if v is None else f'{size / v / 1e6:.2f} MB/s'}"
                for k, v in table[case].items()
            )
            h.progress(f"{case.label}: " + ", ".join(shown))
    report(table, size, link_rate, args)
    if args.plot is not None:
        plot(table, size, link_rate, args)
    print(f"after: {h.machine()}")


def report(
    table: dict[Case, dict[str, float | None]],
    size: int,
    link_rate: float,
    args: argparse.Namespace,
) -> None:
    names = list(next(iter(table.values())))
    both = "ftransfer UDP" in names and "ftransfer TCP (cubic)" in names  # a ratio column?
    rows = []
    for case, cells in table.items():
        shown = []
        for name in names:
            seconds = cells[name]
            if seconds is None:
                shown.append(f"< {size / args.limit / 1e6:.2f} (over {args.limit:g} s)")
            else:
                rate = size / seconds
                shown.append(f"{rate / 1e6:.2f} ({rate / link_rate:.0%})")
        udp, tcp = cells.get("ftransfer UDP"), cells.get("ftransfer TCP (cubic)")
        if udp and tcp:
            ratio = f"{tcp / udp:.1f}x"
        elif udp and "ftransfer TCP (cubic)" in cells:
            ratio = f"> {args.limit / udp:.1f}x"
        else:
            ratio = "n/a"
        rows.append([case.label, *shown, *[ratio] * both])
    h.print_table(
        f"Emulated WAN: {args.rate:g} Mbit/s, {args.rtt:g} ms RTT, 50 ms queue, "
        f"{args.size_mib} MiB per transfer, UDP and TCP median of {args.runs}, "
        f"TFTP single runs; goodput in MB/s (% of the link's {link_rate / 1e6:.2f} MB/s)",
        ["path", *names, *["UDP / TCP (cubic)"] * both],
        rows,
    )
    auto_verdicts(table)
    jitter = Case(0.10, 5.0)
    if jitter in table and "ftransfer UDP" in table[jitter]:
        seconds = table[jitter]["ftransfer UDP"]
        share = size / seconds / link_rate if seconds else 0.0
        verdict = "met" if share >= JITTER_TARGET else "missed"
        print(
            f"{jitter.label}: UDP at {share:.0%} of the link "
            f"(target >= {JITTER_TARGET:.0%}: {verdict})"
        )


def auto_verdicts(table: dict[Case, dict[str, float | None]]) -> None:
    """On each row, ``auto`` against the better of UDP and TCP (either CC)."""
    for case, cells in table.items():
        auto = cells.get("ftransfer auto")
        others = [cells.get(name) for name in ("ftransfer UDP", "ftransfer TCP (cubic)")]
        others.append(cells.get("ftransfer TCP (bbr)"))
        best = min((s for s in others if s), default=None)
        if "ftransfer auto" not in cells or best is None:
            continue
        share = best / auto if auto else 0.0
        verdict = "met" if share >= AUTO_TARGET else "missed"
        print(f"{case.label}: auto at {share:.2f}x the better of UDP and TCP (>= 0.90: {verdict})")


if __name__ == "__main__":
    main()
