"""The TFTP endpoint and client against peers nobody here wrote: curl, tftpy, and
Debian's atftp/atftpd (installed by .ci/run), plus path safety, malformed requests,
session limits and reflection through the real server subprocess."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess, run_cli, temporaries

from ftransfer.client.urls import Url, parse_url
from ftransfer.proto.tftp.packets import (
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Request,
    encode_ack,
    encode_data,
    encode_request,
    parse_untrusted,
)

TFTP_READY = re.compile(r"tftp://(\[[^\]]+\]|[^\s:]+):(\d+)")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
needs_atftp = pytest.mark.skipif(shutil.which("atftp") is None, reason="atftp not installed")
needs_atftpd = pytest.mark.skipif(shutil.which("atftpd") is None, reason="atftpd not installed")


class TftpServer(ServerProcess):
    @property
    def tftp_port(self) -> int:
        match = TFTP_READY.search(self.ready_line)
        assert match, self.ready_line
        return int(match.group(2))

    def url(self, path: str) -> str:
        return f"tftp://127.0.0.1:{self.tftp_port}/{path}"


@pytest.fixture
def tftp(served: Path, tmp_path: Path) -> Iterator[TftpServer]:
    proc = TftpServer(served, "--tftp-port", "0", "--no-fsync", log=tmp_path / "server.log")
    yield proc
    assert proc.stop() == 0, (tmp_path / "server.log").read_text()


def start(served: Path, *args: str) -> TftpServer:
    return TftpServer(served, "--tftp-port", "0", *args, log=Path(os.devnull), pipe_log=True)


def payload(size: int, seed: int = 0) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[seed : seed + size]


def raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


def ask(port: int, request: Request) -> tuple[object, tuple[str, int]]:
    """Send one request from a fresh port; the first answer and where it came from."""
    with raw_socket() as sock:
        sock.sendto(encode_request(request), ("127.0.0.1", port))
        data, source = sock.recvfrom(70000)
        return parse_untrusted(data), source


# ---- curl ------------------------------------------------------------------------------


@needs_curl
@pytest.mark.parametrize("blksize", [None, 1428, 8192])
def test_curl_gets_and_puts(
    tftp: TftpServer, served: Path, tmp_path: Path, blksize: int | None
) -> None:
    body = payload(300_000)
    (served / "f.bin").write_bytes(body)
    extra = [] if blksize is None else ["--tftp-blksize", str(blksize)]
    out = tmp_path / "got.bin"
    subprocess.run(
        ["curl", "-sS", *extra, "-o", str(out), tftp.url("f.bin")], check=True, timeout=60
    )
    assert out.read_bytes() == body
    subprocess.run(
        ["curl", "-sS", *extra, "-T", str(out), tftp.url("up.bin")], check=True, timeout=60
    )
    assert (served / "up.bin").read_bytes() == body
    assert temporaries(served) == []


@needs_curl
def test_curl_netascii_get_sees_crlf_and_cr_nul(tftp: TftpServer, served: Path) -> None:
    (served / "t.txt").write_bytes(b"one\ntwo\r\n")
    got = subprocess.run(["curl", "-sS", "-B", tftp.url("t.txt")], capture_output=True, timeout=60)
    assert got.returncode == 0 and got.stdout == b"one\r\ntwo\r\0\r\n"  # curl keeps the wire form


# ---- tftpy -----------------------------------------------------------------------------

import tftpy  # type: ignore[import-untyped]  # noqa: E402  (a test dependency)


def test_tftpy_client_past_the_block_number_rollover(
    tftp: TftpServer, served: Path, tmp_path: Path
) -> None:
    body = payload(16 * 65_600 + 7)  # 65,601 blocks of 16 bytes
    (served / "big.bin").write_bytes(body)
    client = tftpy.TftpClient("127.0.0.1", tftp.tftp_port, options={"blksize": 16})
    client.download("big.bin", str(tmp_path / "big.bin"))
    assert (tmp_path / "big.bin").read_bytes() == body
    client.upload("up.bin", str(tmp_path / "big.bin"))
    assert (served / "up.bin").read_bytes() == body


@pytest.fixture
def tftpy_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    root = tmp_path / "tftpy-root"
    root.mkdir()
    server = tftpy.TftpServer(str(root))
    thread = threading.Thread(target=server.listen, args=("127.0.0.1", 0), daemon=True)
    thread.start()
    assert server.is_running.wait(10)
    yield server.sock.getsockname()[1], root
    server.stop(now=True)
    thread.join(10)


def test_our_client_against_tftpy_server_past_rollover(
    tftpy_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, root = tftpy_server
    body = payload(16 * 65_600 + 7, seed=3)
    (root / "big.bin").write_bytes(body)
    url = f"tftp://127.0.0.1:{port}/big.bin"
    got = run_cli("get", url, str(tmp_path / "got.bin"), "--blksize", "16", "--json", "-q")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "got.bin").read_bytes() == body
    sent = run_cli("put", str(tmp_path / "got.bin"), f"tftp://127.0.0.1:{port}/up.bin", "-q")
    assert sent.returncode == 0, sent.stderr
    assert (root / "up.bin").read_bytes() == body


# ---- atftp / atftpd --------------------------------------------------------------------


@needs_atftp
def test_atftp_windowed_get_and_put(tftp: TftpServer, served: Path, tmp_path: Path) -> None:
    body = payload(2_000_000)
    (served / "f.bin").write_bytes(body)
    opts = ["--option", "blksize 1428", "--option", "windowsize 16"]
    port = str(tftp.tftp_port)
    out = tmp_path / "got.bin"
    atftp = ["atftp", *opts, "127.0.0.1", port]
    subprocess.run(
        [*atftp[:-2], "-g", "-r", "f.bin", "-l", str(out), *atftp[-2:]], check=True, timeout=60
    )
    assert out.read_bytes() == body
    subprocess.run(
        [*atftp[:-2], "-p", "-r", "up.bin", "-l", str(out), *atftp[-2:]], check=True, timeout=60
    )
    assert (served / "up.bin").read_bytes() == body


@needs_atftpd
def test_our_client_against_atftpd_windowed(tmp_path: Path) -> None:
    root = tmp_path / "atftpd-root"
    root.mkdir(mode=0o777)
    body = payload(3_000_000, seed=5)
    (root / "f.bin").write_bytes(body)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(
        ["atftpd", "--daemon", "--no-fork", "--port", str(port), "--bind-address", "127.0.0.1",
         "--user", "root", "--group", "root", "--logfile", str(tmp_path / "atftpd.log"), str(root)]
    )  # fmt: skip
    try:  # no readiness wait: the client repeats its request until atftpd answers
        url = f"tftp://127.0.0.1:{port}/f.bin"
        got = run_cli("get", url, str(tmp_path / "got.bin"), "--json", "-q")
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "got.bin").read_bytes() == body
        assert b'"windowsize": 32' in got.stdout  # atftpd confirmed RFC 7440
        sent = run_cli("put", str(tmp_path / "got.bin"), f"tftp://127.0.0.1:{port}/up.bin")
        assert sent.returncode == 0, sent.stderr
        assert (root / "up.bin").read_bytes() == body
    finally:
        daemon.terminate()
        daemon.wait(10)


# ---- our client against our server ---------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--blksize", "512", "--windowsize", "1"], ["--netascii"]])
def test_our_client_round_trip(
    tftp: TftpServer, served: Path, tmp_path: Path, extra: list[str]
) -> None:
    body = b"line\r\nbare\rcr\n" * 5000 if "--netascii" in extra else payload(1_000_003)
    (tmp_path / "src").write_bytes(body)
    sent = run_cli("put", str(tmp_path / "src"), tftp.url("dir-less.bin"), "-q", *extra)
    assert sent.returncode == 0, sent.stderr
    assert (served / "dir-less.bin").read_bytes() == body
    got = run_cli("get", tftp.url("dir-less.bin"), str(tmp_path / "back"), "-q", *extra)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "back").read_bytes() == body


def test_missing_file_is_a_clear_error_and_no_local_file(tftp: TftpServer, tmp_path: Path) -> None:
    got = run_cli("get", tftp.url("nope"), str(tmp_path / "nope"))
    assert got.returncode == 4 and b"tftp error 1" in got.stderr
    assert not (tmp_path / "nope").exists() and temporaries(tmp_path) == []


# ---- path safety, bad input, limits ----------------------------------------------------

BAD_NAMES = ["../outside", "/etc/passwd", "a/../../x", "//x", "a\\b", "C:x", "x\x01y", "", ".",
             "n" * 300, ".ftransfer-tmp-0123456789abcdef"]  # fmt: skip


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("write", [False, True])
def test_bad_names_are_refused_both_ways(
    tftp: TftpServer, served: Path, tmp_path: Path, name: str, write: bool
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    packet, _source = ask(
        tftp.tftp_port, Request(write=write, filename=name, mode="octet", options={})
    )
    assert isinstance(packet, Error), packet
    assert packet.code in (ErrorCode.FILE_NOT_FOUND, ErrorCode.ACCESS_VIOLATION)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(served.iterdir()) == []


def test_symlinks_fifos_and_devices_are_refused(
    tftp: TftpServer, served: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    (served / "link").symlink_to(tmp_path / "secret")
    os.mkfifo(served / "fifo")
    (served / "null").symlink_to("/dev/null")
    for name in ("link", "fifo", "null"):
        for write in (False, True):
            packet, _source = ask(
                tftp.tftp_port, Request(write=write, filename=name, mode="octet", options={})
            )
            assert isinstance(packet, Error), (name, write, packet)
    assert (tmp_path / "secret").read_bytes() == b"secret"


def test_read_only_server_refuses_writes(served: Path) -> None:
    server = start(served, "--read-only")
    try:
        packet, _source = ask(
            server.tftp_port, Request(write=True, filename="x", mode="octet", options={})
        )
        assert isinstance(packet, Error) and packet.code == ErrorCode.ACCESS_VIOLATION
    finally:
        assert server.stop() == 0
    assert not (served / "x").exists()


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00\x01name\x00",  # no mode
        b"\x00\x01name\x00octet",  # truncated
        b"\x00\x02name\x00mail\x00",  # obsolete mode
        b"\x00\x01name\x00octet\x00blksize\x00",  # option without value
        b"\x00\x03\x00\x01data",  # DATA to the listener
        b"\x00\x09",  # unknown opcode
    ],
)
def test_malformed_requests_get_a_bounded_error_and_the_server_serves_on(
    tftp: TftpServer, served: Path, junk: bytes
) -> None:
    with raw_socket() as sock:
        sock.sendto(junk, ("127.0.0.1", tftp.tftp_port))
        data, source = sock.recvfrom(70000)
    assert source[1] == tftp.tftp_port and isinstance(parse_untrusted(data), Error)
    assert len(data) <= 3 * len(junk)
    (served / "ok").write_bytes(b"fine")
    packet, _source = ask(
        tftp.tftp_port, Request(write=False, filename="ok", mode="octet", options={})
    )
    assert packet == Data(block=1, payload=b"fine")


def test_datagram_from_wrong_port_gets_error_5_and_transfer_continues(
    tftp: TftpServer, served: Path
) -> None:
    body = payload(2000)
    (served / "f").write_bytes(body)
    with raw_socket() as sock, raw_socket() as intruder:
        sock.sendto(
            encode_request(Request(write=False, filename="f", mode="octet", options={})),
            ("127.0.0.1", tftp.tftp_port),
        )
        data, tid = sock.recvfrom(70000)
        intruder.sendto(encode_ack(1), tid)
        reply, source = intruder.recvfrom(70000)
        assert source == tid and parse_untrusted(reply) == Error(
            code=5, message="unknown transfer id"
        )
        got = bytearray(parse_untrusted(data).payload)  # type: ignore[union-attr]
        block = 1
        while True:
            sock.sendto(encode_ack(block), tid)
            if len(got) == len(body):
                break
            packet = parse_untrusted(sock.recvfrom(70000)[0])
            assert isinstance(packet, Data) and packet.block == block + 1
            got += packet.payload
            block += 1
        assert bytes(got) == body


def test_unanswered_request_gets_one_reply_and_no_retransmission(served: Path) -> None:
    """Reflection: a spoofed request (never acked) costs one datagram, then silence."""
    (served / "f").write_bytes(payload(5000))
    server = start(served, "--tftp-give-up", "2")
    try:
        with raw_socket() as sock:
            request = encode_request(Request(write=False, filename="f", mode="octet", options={}))
            sock.sendto(request, ("127.0.0.1", server.tftp_port))
            first, _tid = sock.recvfrom(70000)
            server.wait_for_log("failed: tftp: no progress")
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recvfrom(70000)  # nothing else ever arrived, not even an ERROR
        assert len(first) == 4 + 512
    finally:
        assert server.stop() == 0


def _flood(port: int, count: int, *, prove: bool) -> tuple[list[socket.socket], dict[str, int]]:
    """``count`` requests from as many ports; ``prove`` acks each DATA 1 and waits
    for DATA 2 before the next request: the transfer has then handled the ACK, so it
    counts as proven whatever the scheduling of the server's threads (acking without
    waiting let the next request evict a transfer whose thread had not yet read its
    ACK: {'data': 14, 'busy': 16} once on a busy machine)."""
    sockets, answers = [], {"data": 0, "busy": 0}
    for _ in range(count):
        sock = raw_socket()
        sockets.append(sock)
        sock.sendto(
            encode_request(Request(write=False, filename="f", mode="octet", options={})),
            ("127.0.0.1", port),
        )
        data, tid = sock.recvfrom(70000)
        packet = parse_untrusted(data)
        if isinstance(packet, Data):
            answers["data"] += 1
            if prove:
                sock.sendto(encode_ack(1), tid)
                assert parse_untrusted(sock.recvfrom(70000)[0]) == Data(
                    block=2, payload=payload(100_000)[512:1024]
                )
        else:
            assert isinstance(packet, Error) and "busy" in packet.message, packet
            answers["busy"] += 1
    return sockets, answers


def test_session_cap_holds_against_a_flood_of_proven_peers(served: Path) -> None:
    """The wiring of the cap (the rule itself: test_tftp_slots.py)."""
    (served / "f").write_bytes(payload(100_000))
    server = start(served, "--tftp-max-sessions", "6", "--tftp-give-up", "120")
    sockets, answers = _flood(server.tftp_port, 30, prove=True)
    try:
        assert answers == {"data": 6, "busy": 24}
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


@needs_curl
def test_unproven_transfers_are_evicted_for_a_real_client(served: Path, tmp_path: Path) -> None:
    body = payload(100_000)
    (served / "f").write_bytes(body)
    server = start(served, "--tftp-max-sessions", "6", "--tftp-give-up", "30")
    sockets, answers = _flood(server.tftp_port, 20, prove=False)  # spoofed-style
    try:
        assert answers == {"data": 20, "busy": 0}  # each evicted the oldest silent one
        out = tmp_path / "got"
        subprocess.run(["curl", "-sS", "-o", str(out), server.url("f")], check=True, timeout=60)
        assert out.read_bytes() == body
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


def test_abandoned_and_killed_uploads_leave_nothing_at_the_final_name(served: Path) -> None:
    server = start(served, "--tftp-give-up", "2")
    with raw_socket() as sock:
        sock.sendto(
            encode_request(Request(write=True, filename="up", mode="octet", options={})),
            ("127.0.0.1", server.tftp_port),
        )
        ack, tid = sock.recvfrom(100)
        assert parse_untrusted(ack) == parse_untrusted(encode_ack(0))
        sock.sendto(encode_data(1, b"x" * 512), tid)
        assert parse_untrusted(sock.recvfrom(100)[0]) == parse_untrusted(encode_ack(1))
        server.wait_for_log("failed: tftp: no progress")  # the client vanished
    assert not (served / "up").exists()
    assert server.stop() == 0
    server = start(served)
    with raw_socket() as sock:
        sock.sendto(
            encode_request(Request(write=True, filename="up", mode="octet", options={})),
            ("127.0.0.1", server.tftp_port),
        )
        _ack, tid = sock.recvfrom(100)
        sock.sendto(encode_data(1, b"x" * 512), tid)
        sock.recvfrom(100)
        assert len(temporaries(served)) == 1  # the upload is in progress
        server.kill()
    assert not (served / "up").exists()


def test_operator_caps_lower_what_a_client_asks_for(served: Path) -> None:
    (served / "f").write_bytes(payload(50_000))
    server = start(served, "--tftp-max-blksize", "1024", "--tftp-max-window", "4")
    try:
        asked = {"blksize": "8192", "windowsize": "32", "tsize": "0", "bogus": "1"}
        packet, _source = ask(
            server.tftp_port, Request(write=False, filename="f", mode="octet", options=asked)
        )
        assert packet == OptionAck(options={"blksize": "1024", "windowsize": "4", "tsize": "50000"})
    finally:
        assert server.stop() == 0


def test_url_port_defaults_to_69_and_ipv6_brackets_parse() -> None:
    assert parse_url("tftp://host/a/b") == Url(scheme="tftp", host="host", port=69, path="a/b")
    assert parse_url("tftp://[::1]:6969/x") == Url(scheme="tftp", host="::1", port=6969, path="x")


def test_evicted_and_shut_down_transfers_send_nothing_to_peers_that_never_answered(
    served: Path,
) -> None:
    """20 requests never acked, 6 slots: 14 transfers are evicted, 6 end at shutdown.
    Once the server has exited every datagram it sent has arrived (loopback), so
    each socket holding only its one DATA 1 proves nothing else was ever sent."""
    (served / "f").write_bytes(payload(100_000))
    server = start(served, "--tftp-max-sessions", "6", "--tftp-give-up", "120")
    sockets, answers = _flood(server.tftp_port, 20, prove=False)
    try:
        assert answers == {"data": 20, "busy": 0}
    finally:
        assert server.stop() == 0
    try:
        for sock in sockets:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recvfrom(70000)  # no ERROR "evicted", no "shutting down"
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("tsize", [str(2**41), "9" * 25])
def test_a_wrq_announcing_more_than_the_limit_is_refused_with_error_3(
    served: Path, tsize: str
) -> None:
    server = start(served)  # the default limit is 1 TiB
    try:
        packet, _source = ask(
            server.tftp_port,
            Request(write=True, filename="big", mode="octet", options={"tsize": tsize}),
        )
    finally:
        assert server.stop() == 0
    assert isinstance(packet, Error) and packet.code == ErrorCode.DISK_FULL, packet
    assert "exceeds the limit" in packet.message
    assert list(served.iterdir()) == []


def test_a_file_that_shrinks_during_a_get_ends_in_an_error_not_a_short_file(
    served: Path,
) -> None:
    """Found by review: a short read became a short final block, so the peer got a
    silently truncated file and took it as whole. A read short of the size known at
    open is now an ERROR, and no DATA is ever shorter than the block size."""
    path = served / "f"
    path.write_bytes(payload(100_000))
    server = start(served)
    try:
        with raw_socket() as sock:
            sock.sendto(
                encode_request(Request(write=False, filename="f", mode="octet", options={})),
                ("127.0.0.1", server.tftp_port),
            )
            sizes = []
            while True:
                data, tid = sock.recvfrom(70000)
                packet = parse_untrusted(data)
                if not isinstance(packet, Data):
                    break
                sizes.append(len(packet.payload))
                if packet.block == 2:  # sent after our ACK 1: we are a proven peer, told why
                    os.truncate(path, 1000)  # blocks 1 and 2 (maybe 3) were read before
                sock.sendto(encode_ack(packet.block), tid)
        assert isinstance(packet, Error), packet
        assert packet.code == 0 and "changed size" in packet.message
        assert set(sizes) == {512} and len(sizes) < 100_000 // 512
    finally:
        assert server.stop() == 0


def test_evicted_transfers_end_at_once_and_close_waits_for_every_thread(
    served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: an evicted transfer's thread, socket and file stayed until
    its next poll (live threads grew with the request rate), and join() skipped
    evicted transfers, so the store could close under them. With the poll made an
    hour long, a victim that is not woken would sit out its give-up time."""
    from ftransfer.config import ServerConfig
    from ftransfer.io import threaded
    from ftransfer.testing.server import serving

    monkeypatch.setattr(threaded, "STOP_POLL_S", 3600.0)
    (served / "f").write_bytes(payload(100_000))
    config = ServerConfig(
        root=str(served), port=0, udp=False, tftp_port=0, tftp_max_sessions=6, tftp_give_up_s=120
    )
    with serving(config) as server:
        port = server.tftp_port
        assert port is not None
        sockets, answers = _flood(port, 20, prove=False)
        names = [f"tftp {sock.getsockname()}" for sock in sockets]
        threads = {t.name: t for t in threading.enumerate() if t.name in names}
        assert answers == {"data": 20, "busy": 0}
        for name in names[:14]:  # each evicted by a later request
            if name in threads:
                threads[name].join(timeout=30)  # a safety net: woken, they end at once
                assert not threads[name].is_alive(), name
        alive = [threads[name] for name in names[14:] if name in threads]
        assert len(alive) == 6 and all(t.is_alive() for t in alive)  # the table runs on
    for sock in sockets:
        sock.close()
    assert not any(thread.is_alive() for thread in alive)  # close woke and joined them
