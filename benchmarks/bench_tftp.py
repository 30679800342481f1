"""TFTP benchmark on loopback: ftransfer's TFTP server and client against C peers.

    python benchmarks/bench_tftp.py [--python PY] [--size-mib 64] [--runs 3]
                                    [--blksizes 512,1428,8192] [--quick]

Needs curl, Debian's ``atftp`` and ``atftpd`` (``apt-get install atftp atftpd``) and
tftpd-hpa's ``in.tftpd``. The two Debian server packages conflict, so when
tftpd-hpa is not installed the script unpacks its .deb (``apt-get download
tftpd-hpa``) into a temporary directory and runs it from there; nothing is
installed. Peers that are missing are skipped.

One file of --size-mib on tmpfs is downloaded, at each block size:

- by curl (lockstep, RFC 1350 + blksize) from tftpd-hpa, atftpd and ftransfer;
- by atftp with windowsize 32 (RFC 7440) from atftpd and ftransfer (tftpd-hpa has
  no windowsize; atftp falls back to lockstep against it, shown for reference);
- by the ftransfer client (lockstep, like curl) and by curl, both from tftpd-hpa.

Each cell is the median of --runs client runs after a warm-up, in MB/s (10^6
bytes/s) of client wall time, servers measured in the same run and interleaved so
that drift hits them alike. The ftransfer client is timed by its own --json
report, which leaves out the ~0.15 s of Python start-up that a curl run does not
pay; curl's start-up (a few ms) stays in its figure.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import _harness as h

FILE = "file.bin"
RUN_LIMIT_S = 120
"""A client run that takes longer is reported as stalled (atftp <- atftpd at
blksize 8192 and windowsize 32 was seen to hang here)."""
Client = Callable[[int, int, Path], float]
"""(server port, blksize, output) -> seconds."""


def find_tftpd_hpa(work: Path) -> str | None:
    """tftpd-hpa's in.tftpd: installed, or unpacked from its .deb into ``work``."""
    installed = Path("/usr/sbin/in.tftpd")
    if installed.exists() and installed.resolve().name == "in.tftpd":
        return str(installed)
    if shutil.which("apt-get") is None:
        return None
    fetched = subprocess.run(
        ["apt-get", "download", "tftpd-hpa"], cwd=work, capture_output=True, check=False
    )
    debs = list(work.glob("tftpd-hpa_*.deb"))
    if fetched.returncode != 0 or not debs:
        return None
    subprocess.run(["dpkg", "-x", str(debs[0]), str(work / "hpa")], check=True)
    binary = work / "hpa" / "usr" / "sbin" / "in.tftpd"
    return str(binary) if binary.exists() else None


def start_servers(
    install: h.Install, work: Path, root: Path, hpa: str | None, stack: contextlib.ExitStack
) -> dict[str, int]:
    """Every server found, running for the length of ``stack``: name -> UDP port."""
    daemons: dict[str, tuple[int, list[str]]] = {}
    if hpa is not None:
        port = h.free_port()
        daemons["tftpd-hpa"] = (port, [hpa, "-L", "-a", f"127.0.0.1:{port}", "-s", str(root)])
    if shutil.which("atftpd"):
        port = h.free_port()
        daemons["atftpd"] = (port, h.atftpd(root, port, log=str(work / "atftpd.log")))
    ports = {}
    for name, (port, command) in daemons.items():
        h.wait_udp_bound(stack.enter_context(h.running(command)), port)
        ports[name] = port
    server = h.ServerProcess(install, root, "--no-udp", "--tftp-port", "0")
    ports["ftransfer"] = stack.enter_context(server).ports["tftp"]
    return ports


def curl(port: int, blksize: int, out: Path) -> float:
    return h.timed(h.curl_tftp("127.0.0.1", port, FILE, out, blksize), timeout=RUN_LIMIT_S)


def atftp(port: int, blksize: int, out: Path) -> float:
    return h.timed(h.atftp_get("127.0.0.1", port, FILE, out, blksize), timeout=RUN_LIMIT_S)


def ftransfer_client(install: h.Install, port: int, blksize: int, out: Path) -> float:
    url = f"tftp://127.0.0.1:{port}/{FILE}"
    args = ["get", url, str(out), "--blksize", str(blksize), "--windowsize", "1"]
    return h.cli_seconds(install, args, timeout=RUN_LIMIT_S)


PAIRS = [
    ("curl", "tftpd-hpa"),
    ("curl", "atftpd"),
    ("curl", "ftransfer"),
    ("atftp w32", "tftpd-hpa"),
    ("atftp w32", "atftpd"),
    ("atftp w32", "ftransfer"),
    ("ftransfer", "tftpd-hpa"),
]


def measure(
    clients: dict[str, Client], ports: dict[str, int], blksize: int, runs: int, out: Path, size: int
) -> dict[tuple[str, str], float]:
    """MB/s of each (client, server) pair, median of ``runs`` interleaved rounds; 0.0
    for a pair that stalled (it is not run again)."""
    stalled: set[tuple[str, str]] = set()

    def case(client: str, server: str) -> float | None:
        if (client, server) in stalled:
            return None
        try:
            seconds = clients[client](ports[server], blksize, out)
        except subprocess.TimeoutExpired:
            stalled.add((client, server))
            return None
        if out.stat().st_size != size:
            raise RuntimeError(f"{client} <- {server}: got {out.stat().st_size} bytes")
        out.unlink()
        return seconds

    pairs = [(c, s) for c, s in PAIRS if s in ports and c in clients]
    cases = {pair: functools.partial(case, *pair) for pair in pairs}
    samples = h.interleaved(cases, runs)
    rates = {
        pair: size / h.median([t for t in times if t is not None]) / 1e6
        for pair, times in samples.items()
        if pair not in stalled
    }
    return rates | dict.fromkeys(stalled, 0.0)


def table(results: dict[int, dict[tuple[str, str], float]], clients: list[str]) -> str:
    rows = []
    for blksize, cells in results.items():
        for client in clients:
            row = {s: cells.get((client, s)) for s in ("tftpd-hpa", "atftpd", "ftransfer")}
            if not any(row.values()):
                continue
            text = ["-" if v is None else f"{v:.1f}" if v else "stalled" for v in row.values()]
            mine = row["ftransfer"]
            ratios = []
            for base in ("tftpd-hpa", "atftpd"):
                theirs = row[base]
                ratios.append(f"{mine / theirs:.2f}x" if mine and theirs else "-")
            rows.append([str(blksize), client, *text, *ratios])
        hpa_curl = cells.get(("curl", "tftpd-hpa"))
        mine = cells.get(("ftransfer", "tftpd-hpa"))
        if hpa_curl and mine:
            label = "ftransfer client vs curl, from tftpd-hpa"
            rows.append([str(blksize), label, "", "", "", f"{mine / hpa_curl:.2f}x", ""])
    headers = ["blksize", "client", "tftpd-hpa", "atftpd", "ftransfer"]
    return h.table([*headers, "ftransfer / tftpd-hpa", "ftransfer / atftpd"], rows)


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="rounds (after one warm-up)")
    parser.add_argument("--blksizes", default="512,1428,8192")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.runs, args.blksizes = 4, 1, "1428"
    (install,) = h.installs(args)
    print(f"{h.machine()}; {install.label}: {install.python}", flush=True)
    size = args.size_mib * h.MIB
    clients: dict[str, Client] = {}
    if shutil.which("curl"):
        clients["curl"] = curl
    if shutil.which("atftp"):
        clients["atftp w32"] = atftp
    clients["ftransfer"] = functools.partial(ftransfer_client, install)
    base = "/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()
    with h.work_dir(base, "ftbench-tftp-") as work:
        root = work / "root"
        root.mkdir(mode=0o755)
        h.make_file(root / FILE, size)
        os.chmod(root / FILE, 0o644)
        hpa = find_tftpd_hpa(work)
        with contextlib.ExitStack() as stack:
            ports = start_servers(install, work, root, hpa, stack)
            h.progress(f"servers: {', '.join(ports)}; file {args.size_mib} MiB on tmpfs")
            results = {}
            for blksize in (int(b) for b in args.blksizes.split(",")):
                results[blksize] = measure(
                    clients, ports, blksize, args.runs, work / "out.bin", size
                )
                h.progress("\n" + table({blksize: results[blksize]}, list(clients)))
    print(
        f"\nTFTP on loopback, {args.size_mib} MiB on tmpfs: median of {args.runs} interleaved "
        "rounds, MB/s (10^6 bytes/s) of client wall time (ftransfer's client: its --json "
        f"time)\n\n{table(results, list(clients))}\n"
    )


if __name__ == "__main__":
    main()
