"""What the benchmarks share: installs to measure, a server on port 0, interleaved
rounds, medians and ratios, markdown tables.

Theory of operation
-------------------
This machine's figures drift by 20-50 % from one run to the next (docs/perf-notes.md,
"How to measure here"), so a benchmark never compares against a number measured
earlier: it runs each case and its baseline alternately, one of each per round, in
one invocation (``interleaved``), and reports the median of each case and the
median (and range) of the per-round ratios. A round's ratio compares two runs that
met the same weather.

What is measured is an *install*: an interpreter and the ``ftransfer`` installed
for it (``--python``, by default the interpreter running the benchmark). A second
one (``--baseline-python``, e.g. the original release's venv) runs in the same
rounds, so "this tree against the release" is one run too. Time a non-editable
install when start-up matters: an editable install's import hook adds ~20 ms to
every start.

The server is ``ftransfer serve --port 0`` as a subprocess; the ready line on its
stdout (``ftransfer: serving ROOT on tcp://HOST:PORT udp://HOST:PORT``) gives the
ports, as in tests/conftest.py. Its memory and CPU are read from ``/proc``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

K = TypeVar("K")
T = TypeVar("T")

MIB = 1 << 20
GIB = 1 << 30
CHUNK = 1 << 20
"""The raw pair's receive buffer, and the unit of file generation (1 MiB)."""
SETTLE_BYTES = 3 * GIB
"""Memory touched and freed before a timed large write: the VM returns freed memory
to the host, and a fresh 1 GiB write then varied from 0.4 s to 2.6 s."""
READY = re.compile(r"(tcp|udp|tftp)://(\[[^\]]+\]|[^\s:]+):(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_S = 30.0
"""How long a server may take to stop after SIGTERM before it is killed."""


# The servers' keys and the clients' known_hosts live in a directory of the run's
# own, never in the user's ~/.config and ~/.local/state (a benchmark starts many
# servers on new ports: each would add a known_hosts line).
_HOME = tempfile.mkdtemp(prefix="ftbench-home-")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_HOME, "config")
os.environ["XDG_STATE_HOME"] = os.path.join(_HOME, "state")
atexit.register(shutil.rmtree, _HOME, True)


# ---- what is measured ---------------------------------------------------------------


class Install:
    """An interpreter and the ``ftransfer`` installed for it."""

    def __init__(self, python: str, role: str = "") -> None:
        self.python = python
        script = Path(python).parent / "ftransfer"
        # The console script is what a user runs; ``-m`` where there is none.
        self.cli = [str(script)] if script.is_file() else [python, "-m", "ftransfer"]
        version = subprocess.run(
            [*self.cli, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.version = version.rsplit(" ", 1)[-1]
        self.label = f"ftransfer {self.version}" + (f" ({role})" if role else "")
        serve_help = subprocess.run(
            [*self.cli, "serve", "--help"], capture_output=True, text=True, check=False
        ).stdout
        self.secure = "--anonymous-write" in serve_help
        """TLS by default and anonymous read-only (0.2 on): servers here are started
        with --anonymous-write and --tftp-writable, clients may add --insecure."""

    def python_output(self, code: str, *args: str) -> str:
        """Standard output of ``python -c code args`` for this install, run from ``/``
        so that a checkout in the current directory is not what gets imported."""
        done = subprocess.run(
            [self.python, "-c", code, *args], capture_output=True, text=True, cwd="/", check=False
        )
        if done.returncode:
            raise RuntimeError(f"{self.label}: {done.stderr.strip()}")
        return done.stdout

    def __repr__(self) -> str:
        return f"Install({self.python!r}: {self.label})"


def parser(doc: str | None, *, baseline: bool = False) -> argparse.ArgumentParser:
    """An argument parser: the docstring's first paragraph as the description, the
    rest as the epilog; ``--python``, ``--quick`` and, if asked, ``--baseline-python``."""
    head, _, rest = (doc or "").strip().partition("\n\n")
    made = argparse.ArgumentParser(
        description=head,
        epilog=rest,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    made.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter whose ftransfer is measured (default: this one; "
        "time a non-editable install for start-up)",
    )
    if baseline:
        made.add_argument(
            "--baseline-python",
            default=None,
            metavar="PYTHON",
            help="also measure the ftransfer of this interpreter (e.g. the 0.1 "
            "release's venv), interleaved with --python",
        )
    made.add_argument("--quick", action="store_true", help="a smoke run: small sizes, few rounds")
    return made


def installs(args: argparse.Namespace) -> list[Install]:
    """The install under test, then the baseline if one was given."""
    baseline = getattr(args, "baseline_python", None)
    found = [Install(args.python)]
    if baseline:
        other = Install(baseline, "baseline")
        if other.version != found[0].version:
            other.label = f"ftransfer {other.version}"
        found.append(other)
    return found


# ---- the server ---------------------------------------------------------------------


class ServerProcess:
    """``ftransfer serve`` as a subprocess; its ports come from the ready line.

    ``prefix`` runs it under another command (``ip netns exec NS``); ``--port`` and
    ``--log-level`` may be overridden through ``args`` (the last one wins)."""

    def __init__(
        self,
        install: Install,
        root: Path,
        *args: str,
        prefix: Sequence[str] = (),
    ) -> None:
        self.root = root
        command = [*prefix, *install.cli, "serve", "--root", str(root), "--port", "0"]
        if install.secure:  # benchmarks measure transfers, anonymous ones
            command += ["--anonymous-write", "--tftp-writable"]
        command += ["--log-level", "warning", *args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.ready_line = self.proc.stdout.readline()
        self.ports = {scheme: int(port) for scheme, _host, port in READY.findall(self.ready_line)}
        if "tcp" not in self.ports:
            self.stop()
            raise RuntimeError(f"no ready line from {command}: {self.ready_line!r}")
        self.host = READY.findall(self.ready_line)[0][1].strip("[]")
        self.pid = self.proc.pid

    @property
    def port(self) -> int:
        return self.ports["tcp"]

    def remote(self, path: str = "", scheme: str = "") -> str:
        """``HOST:PORT/PATH`` (tcp), or ``SCHEME://HOST:PORT/PATH``."""
        port = self.ports[scheme or "tcp"]
        url = f"{self.host}:{port}/{path}"
        return f"{scheme}://{url}" if scheme else url

    def status_kib(self, field: str) -> int:
        return status_kib(self.pid, field)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmRSS``, ``VmHWM``, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


# ---- running clients ----------------------------------------------------------------


class Measured:
    """One finished command: wall seconds, CPU seconds (user + system), peak RSS."""

    def __init__(self, wall: float, cpu: float, maxrss_kib: int, stdout: str) -> None:
        self.wall, self.cpu, self.maxrss_kib, self.stdout = wall, cpu, maxrss_kib, stdout

    def records(self) -> list[dict[str, object]]:
        """The ``--json`` lines of the output."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


LAUNCHER = r"""
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_pid, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
cpu = usage.ru_utime + usage.ru_stime
sys.stderr.write(f"\n@measured {wall} {cpu} {usage.ru_maxrss}\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Forks (not vforks) the command and reports its rusage: wait4 from the benchmark
would charge it the benchmark's own high-water mark (a child started with vfork
keeps the parent's until exec), and the launcher's own start-up stays outside the
wall time."""


def run_measured(command: Sequence[str], timeout: float | None = None) -> Measured:
    """Run ``command`` to completion; raise if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    head, _, tail = done.stderr.rpartition("\n@measured ")
    if done.returncode or not tail:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {head.strip()}")
    wall, cpu, maxrss = tail.split()
    return Measured(float(wall), float(cpu), int(maxrss), done.stdout)


def timed(command: Sequence[str], timeout: float | None = None) -> float:
    """Wall seconds of a command that must succeed (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(
        command,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout,
    )
    return time.perf_counter() - start


def cli_json(
    install: Install, args: Sequence[str], prefix: Sequence[str] = (), timeout: float | None = None
) -> dict[str, object]:
    """The last ``--json`` record of a quiet CLI run (the CLI's own transfer time)."""
    done = subprocess.run(
        [*prefix, *install.cli, *args, "--json", "-q"],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    record: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return record


def seconds_of(record: Mapping[str, object]) -> float:
    value = record["seconds"]
    assert isinstance(value, int | float), record
    return float(value)


def cli_seconds(
    install: Install, args: Sequence[str], prefix: Sequence[str] = (), timeout: float | None = None
) -> float:
    """The CLI's own transfer seconds (``--json``), interpreter start left out."""
    return seconds_of(cli_json(install, args, prefix, timeout))


# ---- the raw pair: the best a Python sender and receiver do ----------------------------

RECEIVER = r"""
import os, socket, sys, time
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
buf = bytearray(1 << 20); view = memoryview(buf)
while True:
    conn, _ = listener.accept()
    target = sys.stdin.readline().strip()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    while n := conn.recv_into(buf):
        os.write(fd, view[:n])
    os.close(fd)
    conn.sendall(b"k")
    conn.close()
"""


class RawPair:
    """The baseline of a bulk transfer: ``sendfile`` from this process into a
    receiver process that does ``recv_into`` a 1 MiB buffer and ``os.write`` to a
    new file; no verification, no fsync."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.sender_cpu = 0.0
        """CPU seconds of the last ``send`` in this thread."""

    def send(self, source: Path, target: Path) -> float:
        """Wall seconds from connect to the receiver's acknowledgement."""
        assert self.proc.stdin is not None
        start, cpu = time.perf_counter(), time.thread_time()
        with socket.create_connection(("127.0.0.1", self.port)) as sock, open(source, "rb") as f:
            self.proc.stdin.write(f"{target}\n")
            self.proc.stdin.flush()
            sock.sendfile(f)
            sock.shutdown(socket.SHUT_WR)
            if sock.recv(1) != b"k":
                raise RuntimeError("the raw receiver failed")
        self.sender_cpu = time.thread_time() - cpu
        return time.perf_counter() - start

    def receiver_cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> RawPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sample:
    """One bulk run: wall seconds, the CLI's own transfer seconds (``--json``: start-up
    left out), CPU seconds (user + system) of the client and of the server, and the
    client's peak RSS."""

    def __init__(
        self,
        wall: float,
        client_cpu: float,
        server_cpu: float,
        transfer: float | None = None,
        client_rss_kib: int = 0,
    ) -> None:
        self.wall, self.client_cpu, self.server_cpu = wall, client_cpu, server_cpu
        self.transfer, self.client_rss_kib = transfer, client_rss_kib


RAW = "raw pair (sendfile -> recv_into + os.write)"
BulkCases = dict[tuple[str, str], Callable[[], Sample]]
"""(install label, "put" or "get") -> one run; ("", RAW) is the raw pair."""


def bulk_cases(
    found: Sequence[Install],
    work: Path,
    source: Path,
    pair: RawPair,
    stack: contextlib.ExitStack,
    *server_args: str,
    insecure_too: bool = False,
) -> tuple[BulkCases, dict[str, ServerProcess]]:
    """The raw pair sending ``source``, and for each install a whole-CLI put of it and
    get of a hard link of it (the same pages: no second copy in memory), against a
    server of that install; each run writes a new file and removes it. With
    ``insecure_too``, the same with --insecure on both sides (label "... --insecure")
    for each install that has TLS."""
    cases: BulkCases = {("", RAW): _raw_run(pair, source, work / "raw.out")}
    servers = {}
    variants = [(install, False) for install in found]
    if insecure_too:
        variants += [(install, True) for install in found if install.secure]
    for number, (install, insecure) in enumerate(variants):
        root = work / f"root-{number}"
        root.mkdir()
        os.link(source, root / "file.bin")
        flag = ["--insecure"] if insecure else []
        label = install.label + (" --insecure" if insecure else "")
        server = stack.enter_context(ServerProcess(install, root, *server_args, *flag))
        servers[label] = server
        got = work / f"got-{number}.bin"
        put = [*install.cli, "put", "-q", "--json", *flag, str(source), server.remote("up.bin")]
        get = [*install.cli, "get", "-q", "--json", *flag, server.remote("file.bin"), str(got)]
        cases[label, "put"] = _cli_run(server, put, root / "up.bin")
        cases[label, "get"] = _cli_run(server, get, got)
    return cases, servers


def _raw_run(pair: RawPair, source: Path, out: Path) -> Callable[[], Sample]:
    def run() -> Sample:
        before = pair.receiver_cpu()
        wall = pair.send(source, out)
        sample = Sample(wall, pair.sender_cpu, pair.receiver_cpu() - before)
        out.unlink()
        return sample

    return run


def _cli_run(server: ServerProcess, command: list[str], written: Path) -> Callable[[], Sample]:
    def run() -> Sample:
        written.unlink(missing_ok=True)  # a new file each time, untimed (docs/perf-notes.md)
        before = server.cpu_seconds()
        done = run_measured(command)
        server_cpu = server.cpu_seconds() - before
        written.unlink()
        records = done.records()
        transfer = seconds_of(records[-1]) if records else None
        return Sample(done.wall, done.cpu, server_cpu, transfer, done.maxrss_kib)

    return run


# ---- TFTP peers --------------------------------------------------------------------


def atftpd(root: Path, port: int, host: str = "127.0.0.1", log: str = "/dev/null") -> list[str]:
    """Debian's atftpd in the foreground, serving ``root`` (as root when we are: it
    would otherwise drop to nobody, who must then be able to read the files)."""
    command = ["atftpd", "--daemon", "--no-fork", "--port", str(port), "--bind-address", host]
    if os.geteuid() == 0:
        command += ["--user", "root", "--group", "root"]
    return [*command, "--logfile", log, str(root)]


def atftp_get(
    host: str, port: int, remote: str, out: Path, blksize: int = 1428, window: int = 32
) -> list[str]:
    """atftp downloading with blksize and windowsize (RFC 7440: only atftp/atftpd)."""
    options = ["--option", f"blksize {blksize}", "--option", f"windowsize {window}"]
    return ["atftp", *options, "-g", "-r", remote, "-l", str(out), host, str(port)]


def curl_tftp(host: str, port: int, remote: str, out: Path, blksize: int = 1428) -> list[str]:
    """curl downloading over TFTP: lockstep, one block per round trip."""
    url = f"tftp://{host}:{port}/{remote}"
    return ["curl", "-sS", "--tftp-blksize", str(blksize), "-o", str(out), url]


def wait_udp_bound(proc: subprocess.Popen[str], port: int, limit_s: float = 10.0) -> None:
    """Until a daemon that prints nothing has bound UDP ``port`` on 127.0.0.1."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        time.sleep(0.05)  # polling a C daemon's bind, in a benchmark: not a test
    raise RuntimeError(f"{proc.args!r} did not bind port {port}")


@contextlib.contextmanager
def running(command: Sequence[str], *, quiet: bool = True) -> Iterator[subprocess.Popen[str]]:
    """A daemon for the length of the block: terminated, then killed if it lingers."""
    output = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(command, stdout=output, stderr=output, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- files and memory ---------------------------------------------------------------


def settle(size: int = SETTLE_BYTES) -> None:
    """Touch and free ``size`` bytes so that the next large write does not wait on
    the host taking memory back (docs/perf-notes.md, "Warm the memory")."""
    block = bytearray(size)
    block[::4096] = bytes(len(block) // 4096)
    del block


def make_file(path: Path, size: int) -> None:
    """A file of random bytes (a 64 MiB random block repeated: nothing here compresses
    or deduplicates, and it is written in a fraction of the time)."""
    block = os.urandom(min(size, 64 * CHUNK))
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            remaining -= out.write(block[:remaining])


@contextlib.contextmanager
def work_dir(base: str | Path, prefix: str) -> Iterator[Path]:
    """A fresh directory under ``base`` (world-readable, for daemons that drop
    privileges), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on (``tmpfs``, ``ext4``, ...)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mount, fstype, *_ = line.split()
        inside = str(path.resolve()).startswith(mount.rstrip("/") + "/") or mount == "/"
        if inside and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free on 127.0.0.1 now (for daemons that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- rounds, medians, ratios ---------------------------------------------------------


def interleaved(
    cases: Mapping[K, Callable[[], T]],
    rounds: int,
    *,
    warmup: int = 1,
    before: Callable[[], None] | None = None,
) -> dict[K, list[T]]:
    """Run every case once per round, ``rounds`` times after ``warmup`` discarded
    rounds; the order rotates each round, so no case always runs first (or right
    after the same neighbour). ``before`` runs before each case (e.g. ``settle``)."""
    names = list(cases)
    results: dict[K, list[T]] = {name: [] for name in names}
    for number in range(warmup + rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            if before is not None:
                before()
            value = cases[name]()
            if number >= warmup:
                results[name].append(value)
        progress(f"round {number + 1 - warmup}/{rounds}" if number >= warmup else "warm-up")
    return results


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def per_round(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """The ratio within each round (the rounds of ``interleaved``)."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def ratio(values: Sequence[float]) -> str:
    """``1.23x (1.10-1.31)``: the median of per-round ratios, and their range."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print(f"\n{title}\n\n{table(headers, rows)}\n", flush=True)


def progress(text: str) -> None:
    """A line on stderr, so that stdout holds the tables alone."""
    print(f"  {text}", file=sys.stderr, flush=True)


def machine() -> str:
    """CPUs and load, to go with every table: figures here depend on the neighbours."""
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
