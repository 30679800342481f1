"""Resume, end to end: the real server and the real CLI, over TCP (TLS), cut by a
kill -9 of either side, then run again. Each test waits for a journal to hold
whole chunks (the condition, never the time) before it cuts; a rate limit keeps
the transfer from finishing first."""

from __future__ import annotations

import json
import os
import random
import select
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, DEADLINE_S, RawPeer, ServerProcess, run_cli, wait_until

from ftransfer.checksum import CHUNK_BYTES, digest_bytes
from ftransfer.proto.tcp import events as ev
from ftransfer.storage.journal import RECORD

SIZE = 5 * CHUNK_BYTES + 4321
SLOW = "6M"  # (the first run would take about 7 s: it is always cut before)


@pytest.fixture(scope="module")
def payload() -> bytes:
    return random.Random(12).randbytes(SIZE)


@pytest.fixture
def source(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    return path


def journals(directory: Path) -> list[Path]:
    return sorted(directory.glob(".ftransfer-part-*.j"))


def whole_chunks(directory: Path) -> int:
    """Records in the one journal in ``directory`` (0 if there is none)."""
    found = journals(directory)
    if not found:
        return 0
    raw = found[0].read_bytes()
    if b"\n" not in raw:
        return 0  # (made, its header not yet written)
    return (len(raw) - raw.index(b"\n") - 1) // RECORD.size


def cut(args: list[str], ready: object) -> None:
    """Start the CLI, wait until ``ready()``, kill -9 it."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(ready, "whole chunks in the journal")  # type: ignore[arg-type]
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()


def record_of(done: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, object] = json.loads(done.stdout.decode().splitlines()[-1])
    return result


TRANSPORTS = pytest.mark.parametrize("scheme", ["tcp", "udp"])


def at(server: ServerProcess, scheme: str, path: str) -> str:
    return f"{scheme}://{server.remote(path)}"


def log_until(server: ServerProcess, text: str) -> str:
    """The server's (piped) log up to the end of the line holding ``text``, read
    with a deadline of its own (a missing line fails here, not at the suite's
    timeout)."""
    fd, data = server.log.fileno(), b""
    end = time.monotonic() + DEADLINE_S
    while (left := end - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
        at = data.find(text.encode())
        if at >= 0 and b"\n" in data[at:]:
            return data[: data.index(b"\n", at) + 1].decode(errors="replace")
    raise AssertionError(f"no {text!r} in the server's log: {data[-2000:]!r}")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".ftransfer-"))


@TRANSPORTS
def test_a_killed_put_resumes_and_moves_only_the_rest(
    served: Path, tmp_path: Path, source: Path, payload: bytes, scheme: str
) -> None:
    server = ServerProcess(served, log=tmp_path / "server.log", pipe_log=True)
    try:
        cut(
            ["put", "-q", "--limit-rate", SLOW, str(source), at(server, scheme, "big.bin")],
            lambda: whole_chunks(served) >= 2,
        )
        assert not (served / "big.bin").exists()  # nothing half-visible
        assert whole_chunks(served) >= 2
        done = run_cli("put", "--json", str(source), at(server, scheme, "big.bin"))
        result = record_of(done)
        resumed = int(str(result["resumed_from"]))
        assert resumed >= 2 * CHUNK_BYTES and resumed % CHUNK_BYTES == 0
        assert b"resuming at" in done.stderr
        assert (served / "big.bin").read_bytes() == payload
        assert result["digest"] == digest_bytes(payload).hex()
        assert leftovers(served) == []
        # the cut run's upload ended (UDP: taken over, its session still alive)
        assert "aborted" in server.wait_for_log(f"{scheme} put big.bin: ")
        server.wait_for_log(f"{scheme} put big.bin: {SIZE - resumed} bytes")  # only the rest
    finally:
        server.stop()


@TRANSPORTS
def test_a_killed_get_resumes_and_moves_only_the_rest(
    served: Path, tmp_path: Path, payload: bytes, scheme: str
) -> None:
    (served / "big.bin").write_bytes(payload)
    server = ServerProcess(served, "--max-rate", SLOW, log=tmp_path / "server.log", pipe_log=False)
    local = tmp_path / "down"
    local.mkdir()
    try:
        target = local / "big.bin"
        remote = at(server, scheme, "big.bin")
        cut(["get", "-q", remote, str(target)], lambda: whole_chunks(local) >= 2)
        assert not target.exists()
        held = whole_chunks(local)
        server.stop()
        # the same address (a resume is bound to it), no limit, nothing remembered
        server = ServerProcess(served, "--port", str(server.port), log=tmp_path / "server2.log")
        result = record_of(run_cli("get", "--json", at(server, scheme, "big.bin"), str(target)))
        assert int(str(result["resumed_from"])) == held * CHUNK_BYTES
        assert target.read_bytes() == payload
        assert leftovers(local) == []
        server.stop()  # (its log is complete)
        log = (tmp_path / "server2.log").read_text()
        assert f"{scheme} get big.bin: {SIZE - held * CHUNK_BYTES} bytes" in log
    finally:
        server.stop()


def test_a_killed_server_keeps_the_partial_for_the_next_run(
    served: Path, tmp_path: Path, source: Path, payload: bytes
) -> None:
    server = ServerProcess(served, log=tmp_path / "server.log")
    proc = subprocess.Popen(
        [*CLI, "put", "-q", "--limit-rate", SLOW, str(source), server.remote("big.bin")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: whole_chunks(served) >= 2, "whole chunks in the server's journal")
        server.kill()  # kill -9 of the server, mid-upload
        assert proc.wait(timeout=120) != 0
        held = whole_chunks(served)
        server = ServerProcess(served, "--port", str(server.port), log=tmp_path / "server2.log")
        result = record_of(run_cli("put", "--json", str(source), server.remote("big.bin")))
        assert int(str(result["resumed_from"])) == held * CHUNK_BYTES
        assert (served / "big.bin").read_bytes() == payload
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_no_resume_starts_over(served: Path, tmp_path: Path, source: Path, payload: bytes) -> None:
    server = ServerProcess(served, log=tmp_path / "server.log")
    try:
        cut(
            ["put", "-q", "--limit-rate", SLOW, str(source), server.remote("big.bin")],
            lambda: whole_chunks(served) >= 1,
        )
        result = record_of(
            run_cli("put", "--json", "--no-resume", str(source), server.remote("big.bin"))
        )
        assert result["resumed_from"] == 0
        assert (served / "big.bin").read_bytes() == payload
    finally:
        server.stop()


@TRANSPORTS
def test_a_changed_source_starts_over(
    served: Path, tmp_path: Path, source: Path, payload: bytes, scheme: str
) -> None:
    server = ServerProcess(served, log=tmp_path / "server.log")
    try:
        cut(
            ["put", "-q", "--limit-rate", SLOW, str(source), at(server, scheme, "big.bin")],
            lambda: whole_chunks(served) >= 2,
        )
        changed = b"C" + payload[1:]  # same size; the first chunk differs
        source.write_bytes(changed)
        result = record_of(run_cli("put", "--json", str(source), at(server, scheme, "big.bin")))
        assert result["resumed_from"] == 0
        assert (served / "big.bin").read_bytes() == changed
        if scheme == "tcp":  # the old partial was replaced, then committed
            assert leftovers(served) == []
        # (UDP: the killed client's session holds the old partial until its give-up
        # time, so the new upload, under a new id, was written beside it; the old
        # one is kept for its time to live, and never spliced in)
    finally:
        server.stop()


def test_a_changed_remote_file_is_downloaded_whole(
    served: Path, tmp_path: Path, payload: bytes
) -> None:
    (served / "big.bin").write_bytes(payload)
    server = ServerProcess(served, "--max-rate", SLOW, log=tmp_path / "server.log")
    local = tmp_path / "down"
    local.mkdir()
    target = local / "big.bin"
    try:
        cut(["get", "-q", server.remote("big.bin"), str(target)], lambda: whole_chunks(local) >= 2)
        server.stop()
        changed = payload[:-1] + b"!"
        (served / "big.bin").write_bytes(changed)  # a new mtime: another file
        server = ServerProcess(served, "--port", str(server.port), log=tmp_path / "server2.log")
        result = record_of(run_cli("get", "--json", server.remote("big.bin"), str(target)))
        assert result["resumed_from"] == 0
        assert target.read_bytes() == changed
        assert leftovers(local) == []
    finally:
        server.stop()


def test_an_expired_partial_is_not_resumed(
    served: Path, tmp_path: Path, source: Path, payload: bytes
) -> None:
    server = ServerProcess(served, "--partial-ttl", "1h", log=tmp_path / "server.log")
    try:
        cut(
            ["put", "-q", "--limit-rate", SLOW, str(source), server.remote("big.bin")],
            lambda: whole_chunks(served) >= 2,
        )
        old = os.stat(journals(served)[0]).st_mtime - 7200  # two hours untouched
        for path in served.iterdir():
            os.utime(path, (old, old))
        result = record_of(run_cli("put", "--json", str(source), server.remote("big.bin")))
        assert result["resumed_from"] == 0
        assert (served / "big.bin").read_bytes() == payload
    finally:
        server.stop()


def test_partials_are_never_listed_nor_served(served: Path, tmp_path: Path, source: Path) -> None:
    server = ServerProcess(served, log=tmp_path / "server.log")
    try:
        cut(
            ["put", "-q", "--limit-rate", SLOW, str(source), server.remote("big.bin")],
            lambda: whole_chunks(served) >= 1,
        )
        listing = run_cli("ls", server.remote())
        assert listing.returncode == 0 and b"ftransfer-part" not in listing.stdout
        [journal] = journals(served)
        got = run_cli("get", server.remote(journal.name), str(tmp_path / "stolen"))
        assert got.returncode == 5 and b"reserved" in got.stderr
        assert not (tmp_path / "stolen").exists()
    finally:
        server.stop()


def test_a_downloader_that_vanishes_stops_the_send_at_once(served: Path, tmp_path: Path) -> None:
    """A TLS transport over a dead socket drops what it is given without pushing
    back; the send must still stop at the next frame, not read and encrypt the rest
    of the file (asyncio then warns "socket.send() raised exception" per write)."""
    (served / "big.bin").write_bytes(bytes(64 << 20))
    server = ServerProcess(served, log=tmp_path / "server.log", pipe_log=True)
    try:
        peer = RawPeer(server.port)
        peer.send(ev.HelloOffered(min_version=4, max_version=4), ev.GetRequested(path="big.bin"))
        got: list[object] = []
        while not any(isinstance(e, ev.FileData) for e in got):
            got.extend(peer.events())  # the download is under way
        raw = peer.sock.detach() if hasattr(peer.sock, "detach") else None
        plain = socket.socket(fileno=raw) if raw is not None else peer.sock
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        plain.close()  # a reset: the peer is gone
        log = log_until(server, "get big.bin: ")
        record = log.splitlines()[-1]
        assert "ended before the last byte" in record or "failed" in record
        assert "socket.send() raised" not in log
    finally:
        server.stop()


def test_a_refused_resume_is_sent_again_from_0(
    served: Path, tmp_path: Path, source: Path, payload: bytes
) -> None:
    """The server holds the partial but cannot take it up (here another process
    holds its journal's lock): it refuses the PUT_AT with ERROR 31, and the client
    sends the file once more from 0, under a new record, as protocol.md says."""
    import fcntl

    server = ServerProcess(served, log=tmp_path / "server.log")
    try:
        cut(
            ["put", "-q", "--limit-rate", SLOW, str(source), server.remote("big.bin")],
            lambda: whole_chunks(served) >= 2,
        )
        with open(journals(served)[0], "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            result = record_of(run_cli("put", "--json", str(source), server.remote("big.bin")))
        assert result["resumed_from"] == 0
        assert (served / "big.bin").read_bytes() == payload
    finally:
        server.stop()


def test_a_source_changed_behind_a_restored_mtime_starts_over(
    served: Path, tmp_path: Path, source: Path, payload: bytes
) -> None:
    """A later chunk changed and the mtime set back (touch -r, cp -p, rsync -t do
    that): the ctime still moved, so the record is not this file's."""
    server = ServerProcess(served, log=tmp_path / "server.log")
    try:
        before = source.stat()
        cut(
            ["put", "-q", "--limit-rate", SLOW, str(source), server.remote("big.bin")],
            lambda: whole_chunks(served) >= 2,
        )
        changed = bytearray(payload)
        changed[CHUNK_BYTES + 10] ^= 0xFF  # in chunk 1: the first chunk is unchanged
        with open(source, "r+b") as out:
            out.seek(CHUNK_BYTES + 10)
            out.write(bytes([changed[CHUNK_BYTES + 10]]))
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
        result = record_of(run_cli("put", "--json", str(source), server.remote("big.bin")))
        assert result["resumed_from"] == 0
        assert (served / "big.bin").read_bytes() == bytes(changed)
    finally:
        server.stop()
