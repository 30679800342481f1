"""Memory under connection churn, on the real server (a subprocess): what it holds
is bounded by what is open now, not by what was ever open (docs/threats.md, "Resources
under churn"). Memory is not timing: the bounds hold however slow the machine is.

Each connection sends HELLO and a STAT of a 60 KB name (refused), so the server
really reads into, and touches, each connection's receive buffer. Before a
measurement the server must have let go of the connections just closed: the test
makes HELLO round trips until the server's open descriptors are back to their
idle count plus the probe's (closes are handled in order with those round trips),
which also checks that no descriptor leaked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from pathlib import Path

from conftest import ServerProcess

from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role

MIB = 1 << 20
CHURNED, AT_ONCE, HELD = 2000, 16, 250
LONG_NAME = "x" * 60_000
MAX_PROBES = 1000
"""Round trips allowed for the server to release closed connections (a few suffice)."""


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) * 1024


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _targets(pid: int) -> list[str]:
    """What the server's descriptors point at (for the failure message)."""
    found = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        with contextlib.suppress(OSError):
            found.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return found


def _send_requests(sock: socket.socket, *, stat: bool) -> Connection:
    """HELLO (and a STAT of a long name), at once: a connection that waits for its
    HELLO is closed after the server's hello timeout (10 s), which 250 TLS
    handshakes in a row can outlast on a loaded machine."""
    conn = Connection(Role.CLIENT)
    requests: list[ev.Event] = [ev.HelloOffered(min_version=4, max_version=4)]
    if stat:
        requests.append(ev.StatRequested(path=LONG_NAME))
    sock.sendall(b"".join(conn.send(r) for r in requests))
    return conn


def _read_replies(sock: socket.socket, conn: Connection) -> None:
    """Read until the last reply: the server has read everything."""
    while conn.pending_requests:
        conn.receive_data(sock.recv(1 << 16))
        while not isinstance(event := conn.next_event(), ev.NeedData):
            assert isinstance(event, ev.HelloAccepted | ev.Failed), event


def _served(sock: socket.socket, *, stat: bool) -> None:
    _read_replies(sock, _send_requests(sock, stat=stat))


def _connect(port: int) -> socket.socket:
    """A TLS connection, as every client makes by default (no certificate check:
    the server is ours)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30))


def _open(port: int, count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        sock = _connect(port)
        opened.append((sock, _send_requests(sock, stat=True)))
    for sock, conn in opened:
        _read_replies(sock, conn)
    return [sock for sock, _conn in opened]


def _settle(server: ServerProcess, idle_descriptors: int) -> None:
    """HELLO round trips until the server holds no descriptors but its idle ones and
    the probe's. Counted while the probe is open: once its round trip is answered
    the server holds its socket, whereas a count after the probe's close would race
    with the server noticing that close."""
    for _ in range(MAX_PROBES):
        with _connect(server.port) as probe:
            _served(probe, stat=False)
            if _descriptors(server.proc.pid) <= idle_descriptors + 1:
                return
    raise AssertionError(
        f"the server kept descriptors of closed connections: idle {idle_descriptors}, "
        f"now {_targets(server.proc.pid)}"
    )


def test_rss_is_bounded_by_open_connections_not_by_past_ones(served: Path, tmp_path: Path) -> None:
    server = ServerProcess(
        served,
        *("--no-udp", "--max-connections", "300", "--max-per-address", "300"),
        log=tmp_path / "log",
    )
    pid = server.proc.pid
    try:
        idle_descriptors = _descriptors(pid)  # no connection yet
        for sock in _open(server.port, AT_ONCE):  # warm up: one of everything allocated
            sock.close()
        _settle(server, idle_descriptors)
        idle = _rss(pid)
        for _round in range(CHURNED // AT_ONCE):
            for sock in _open(server.port, AT_ONCE):
                sock.close()
        _settle(server, idle_descriptors)
        churned = _rss(pid)
        held = _open(server.port, HELD)
        holding = _rss(pid)
        for sock in held:
            sock.close()
        _settle(server, idle_descriptors)
        released = _rss(pid)
    finally:
        assert server.stop() == 0
    grown = {
        k: (v - idle) / MIB
        for k, v in [("churned", churned), ("holding", holding), ("released", released)]
    }
    # was 240 MiB, then 15 with heap buffers, then 420 with TLS (a close-grace timer
    # held each closed connection's TLS state)
    assert grown["churned"] < 12, grown
    # 250 x (64 KiB of ours + 64 KiB of asyncio's TLS reads + OpenSSL's state), and
    # objects: was 105 with asyncio's 256 KiB TLS read buffer, 260 before heap buffers
    assert grown["holding"] < 72, grown
    assert grown["released"] < 12, grown  # heap buffers stayed resident: 23 MiB
