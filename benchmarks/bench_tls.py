"""The ceiling of Python's ssl on this machine: TLS 1.3 file -> file against plaintext.

    python benchmarks/bench_tls.py [--size-mib 256] [--runs 5] [--dir /dev/shm] [--quick]

No ftransfer here: a sender in this process and a receiver in another one, on
loopback, moving one file (tmpfs by default) with the best loops Python allows,
so that bench_bulk.py's figures for ftransfer can be read against what TLS costs
at all. Each case is a pair of loops:

- ``plain sendfile``: ``os.sendfile`` -> ``recv_into`` 1 MiB + ``os.write`` (the raw
  pair of bench_bulk.py, and what ``--insecure`` does for a download)
- ``plain read+send``: ``preadv`` 1 MiB + ``sendall`` -> the same receiver
- ``ssl socket``: ``SSLSocket.sendall`` of 1 MiB -> ``SSLSocket.recv_into`` (a
  socket BIO: OpenSSL writes each 16 KiB record with its own ``send`` and reads
  each with two ``recv`` calls, its header and its body)
- ``ssl memory BIO``: ``SSLObject.write`` of 1 MiB into a memory BIO, then one
  ``sendall`` of the records -> ``recv_into`` 1 MiB of records, into a memory BIO,
  ``SSLObject.read`` until it is empty (what asyncio's SSL transport does, with
  larger reads: asyncio's default is 256 KiB, the ftransfer server's 64 KiB)
- ``ssl memory BIO -> ssl socket`` and back: the two mixed

and ``+ xxh3`` hashes every byte on both ends (xxh3-128, as ftransfer verifies).
The TLS cases run with the cipher this machine negotiates by default
(TLS_AES_256_GCM_SHA384); ``--aes128`` makes both ends use TLS_AES_128_GCM_SHA256
(through an OpenSSL configuration file: Python has no ``set_ciphersuites``).

Rounds are interleaved (the order rotating), 3 GiB of memory touched and freed
before each case (docs/perf-notes.md); the table gives the median wall time from
the first byte sent to the receiver's acknowledgement (the handshake is left
out), the median and range of the per-round ratio to ``plain sendfile``, and the
CPU seconds of each end.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _harness as h

CHUNK = 1 << 20
"""Every loop moves 1 MiB per call (read, write, send, recv_into)."""
TLS_RECORD = 16 * 1024
AES128_CONF = """\
openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = TLS_AES_128_GCM_SHA256
"""

# ---- the two ends' loops -------------------------------------------------------------


def _hasher(hashing: bool) -> Callable[[memoryview], None]:
    if not hashing:
        return lambda view: None
    import xxhash

    return xxhash.xxh3_128().update


def receive_plain(sock: socket.socket, fd: int, size: int, hashing: bool) -> None:
    buf = memoryview(bytearray(CHUNK))
    update, got = _hasher(hashing), 0
    while got < size and (n := sock.recv_into(buf)):
        update(buf[:n])
        os.write(fd, buf[:n])
        got += n


def receive_ssl_socket(sock: ssl.SSLSocket, fd: int, size: int, hashing: bool) -> None:
    buf = memoryview(bytearray(CHUNK))
    update, got = _hasher(hashing), 0
    while got < size:
        n = sock.recv_into(buf)  # one record (16 KiB) per call: fill the buffer first
        if not n:
            break
        while n <= CHUNK - TLS_RECORD and sock.pending():
            n += sock.recv_into(buf[n:])
        update(buf[:n])
        os.write(fd, buf[:n])
        got += n


def receive_bio(tls: BioTls, fd: int, size: int, hashing: bool) -> None:
    buf = memoryview(bytearray(CHUNK))
    update, got = _hasher(hashing), 0
    while got < size and (n := tls.recv_into(buf)):
        update(buf[:n])
        os.write(fd, buf[:n])
        got += n


def send_sendfile(sock: socket.socket, fd: int, size: int, _hashing: bool) -> None:
    sent = 0
    while sent < size:
        sent += os.sendfile(sock.fileno(), fd, sent, size - sent)


def send_loop(send: Callable[[memoryview], object], fd: int, size: int, hashing: bool) -> None:
    buf = memoryview(bytearray(CHUNK))
    update, offset = _hasher(hashing), 0
    while offset < size:
        n = os.preadv(fd, [buf[: min(CHUNK, size - offset)]], offset)
        update(buf[:n])
        send(buf[:n])
        offset += n


class BioTls:
    """TLS over a blocking socket through two memory BIOs (as asyncio does it)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=server)
        self.raw = memoryview(bytearray(CHUNK + 64 * 1024))
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._feed()
        self._flush()

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def _feed(self) -> bool:
        n = self.sock.recv_into(self.raw)
        if not n:
            self.incoming.write_eof()
            return False
        self.incoming.write(self.raw[:n])
        return True

    def sendall(self, data: memoryview | bytes) -> None:
        self.obj.write(data)
        self._flush()

    def recv_into(self, buf: memoryview) -> int:
        got = 0
        while True:
            try:
                while got < len(buf):
                    n: int = self.obj.read(len(buf) - got, buf[got:])  # type: ignore[assignment]
                    if not n:  # close_notify
                        return got
                    got += n
                return got
            except ssl.SSLWantReadError:
                if got:
                    return got
                if not self._feed():
                    return 0
            except ssl.SSLZeroReturnError:
                return got


# ---- the receiver process ------------------------------------------------------------


def receiver(conf: str) -> None:
    """Accept one connection per command line on stdin (``mode hash target size``),
    receive into a new file, acknowledge with one byte."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.num_tickets = 0
    cert, key = conf.split(",")
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    for line in sys.stdin:
        mode, hashing_word, target, size_word = line.split()
        hashing, size = hashing_word == "1", int(size_word)
        conn, _ = listener.accept()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if mode == "plain":
            receive_plain(conn, fd, size, hashing)
            conn.sendall(b"k")
        elif mode == "socket":
            tls = context.wrap_socket(conn, server_side=True)
            receive_ssl_socket(tls, fd, size, hashing)
            tls.sendall(b"k")
            tls.close()
        else:
            bio = BioTls(conn, context, server=True)
            receive_bio(bio, fd, size, hashing)
            bio.sendall(b"k")
        os.close(fd)
        conn.close()


class Receiver:
    def __init__(self, cert: str, key: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver", f"{cert},{key}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def expect(self, mode: str, hashing: bool, target: Path, size: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{mode} {int(hashing)} {target} {size}\n")
        self.proc.stdin.flush()

    def cpu(self) -> float:
        return h.cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ---- cases ---------------------------------------------------------------------------


class Sample:
    def __init__(self, wall: float, sender_cpu: float, receiver_cpu: float, cipher: str) -> None:
        self.wall, self.sender_cpu, self.receiver_cpu = wall, sender_cpu, receiver_cpu
        self.cipher = cipher


CASES = {
    # name: (sender, receiver mode)
    "plain sendfile": ("sendfile", "plain"),
    "plain read+send": ("plain", "plain"),
    "ssl socket": ("socket", "socket"),
    "ssl memory BIO": ("bio", "bio"),
    "ssl socket -> memory BIO": ("socket", "bio"),
    "ssl memory BIO -> socket": ("bio", "socket"),
}


def run_case(
    receiver_: Receiver,
    context: ssl.SSLContext,
    source: Path,
    target: Path,
    sender: str,
    mode: str,
    hashing: bool,
) -> Sample:
    size = source.stat().st_size
    target.unlink(missing_ok=True)
    receiver_.expect(mode, hashing, target, size)
    sock = socket.create_connection(("127.0.0.1", receiver_.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd = os.open(source, os.O_RDONLY)
    cipher = ""
    try:
        if sender == "socket":
            tls = context.wrap_socket(sock)
            cipher = (tls.cipher() or ("",))[0]
            start, cpu, before = time.perf_counter(), time.thread_time(), receiver_.cpu()
            send_loop(tls.sendall, fd, size, hashing)
            ok = tls.recv(1)
        elif sender == "bio":
            bio = BioTls(sock, context, server=False)
            cipher = (bio.obj.cipher() or ("",))[0]
            start, cpu, before = time.perf_counter(), time.thread_time(), receiver_.cpu()
            send_loop(bio.sendall, fd, size, hashing)
            one = memoryview(bytearray(16))
            ok = bytes(one[: bio.recv_into(one)])
        else:
            start, cpu, before = time.perf_counter(), time.thread_time(), receiver_.cpu()
            if sender == "sendfile":
                send_sendfile(sock, fd, size, hashing)
            else:
                send_loop(sock.sendall, fd, size, hashing)
            ok = sock.recv(1)
        wall = time.perf_counter() - start
        sample = Sample(wall, time.thread_time() - cpu, receiver_.cpu() - before, cipher)
    finally:
        os.close(fd)
        sock.close()
    if ok != b"k" or target.stat().st_size != size:
        raise RuntimeError(f"{sender} -> {mode}: the receiver failed")
    target.unlink()
    return sample


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5, help="rounds (after one warm-up)")
    parser.add_argument("--dir", default="/dev/shm", help="where files go (default tmpfs)")
    parser.add_argument("--aes128", action="store_true", help="TLS_AES_128_GCM_SHA256")
    parser.add_argument("--no-hash", action="store_true", help="leave out the + xxh3 cases")
    parser.add_argument("--receiver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver(args.receiver)
        return
    settle_bytes = h.SETTLE_BYTES
    if args.quick:
        args.size_mib, args.runs, settle_bytes = 32, 2, 256 * h.MIB
    env = dict(os.environ)
    conf_dir = Path(tempfile.mkdtemp(prefix="ftbench-tls-"))
    if args.aes128:
        conf = conf_dir / "openssl.cnf"
        conf.write_text(AES128_CONF)
        env["OPENSSL_CONF"] = os.environ["OPENSSL_CONF"] = str(conf)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # after OPENSSL_CONF: read once
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    cert, key = _identity(conf_dir)
    print(h.machine(), flush=True)
    size = args.size_mib * h.MIB
    with h.work_dir(args.dir, "ftbench-tls-") as work:
        source, target = work / "source.bin", work / "target.bin"
        h.make_file(source, size)
        recv = Receiver(str(cert), str(key), env)
        try:
            cases: dict[str, Callable[[], Sample]] = {}
            for hashing in (False, True) if not args.no_hash else (False,):
                for name, (sender, mode) in CASES.items():
                    if hashing and sender == "sendfile":
                        continue
                    label = name + (" + xxh3" if hashing else "")
                    cases[label] = _bind(recv, context, source, target, sender, mode, hashing)
            results = h.interleaved(cases, args.runs, before=lambda: h.settle(settle_bytes))
        finally:
            recv.close()
        fs = h.filesystem(work)
    report(results, size, fs, args)
    print(f"after: {h.machine()}")


def _bind(
    recv: Receiver,
    context: ssl.SSLContext,
    source: Path,
    target: Path,
    sender: str,
    mode: str,
    hashing: bool,
) -> Callable[[], Sample]:
    return lambda: run_case(recv, context, source, target, sender, mode, hashing)


def _identity(where: Path) -> tuple[Path, Path]:
    """A throwaway P-256 key and self-signed certificate (openssl(1), else ftransfer)."""
    cert, key = where / "cert.pem", where / "key.pem"
    try:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=bench", "-days", "1",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        from ftransfer.io.tls import ensure_identity

        made_cert, made_key, _ = ensure_identity(str(where / "state"))
        return Path(made_cert), Path(made_key)
    return cert, key


def report(results: dict[str, list[Sample]], size: int, fs: str, args: argparse.Namespace) -> None:
    base = [s.wall for s in results["plain sendfile"]]
    rows = []
    for name, samples in results.items():
        walls = [s.wall for s in samples]
        rows.append(
            [
                name,
                samples[0].cipher or "-",
                f"{h.median(walls):.3f}",
                f"{size / h.median(walls) / 1e6:,.0f}",
                h.ratio(h.per_round(base, walls)),
                f"{h.median([s.sender_cpu for s in samples]):.2f}",
                f"{h.median([s.receiver_cpu for s in samples]):.2f}",
            ]
        )
    h.print_table(
        f"{args.size_mib} MiB file -> file on {fs}, loopback, 1 MiB per call; medians of "
        f"{args.runs} interleaved rounds; ratio: median (range) of per-round "
        "plain sendfile / case",
        ["sender -> receiver", "cipher", "wall s", "MB/s", "vs plain sendfile", "sender CPU s",
         "receiver CPU s"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
