"""Several stateless servers on one bucket of a real SeaweedFS: the real server
processes and the real CLI, over TCP (TLS), UDP and TFTP, with kill -9 of a node,
concurrent writers through different nodes, a restart, HAProxy in front, and a
store that is misconfigured or goes away. Every wait is for a condition."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, ServerProcess, run_cli, s3_server_args, wait_until
from seaweed import Seaweed

from ftransfer.checksum import CHUNK_BYTES, TreeHasher
from ftransfer.errors import ExitCode

SIZE = 4 * CHUNK_BYTES + 777
SLOW = "6M"  # (the cut run would take about 6 s: it is always cut before)


@pytest.fixture(scope="module")
def payload() -> bytes:
    return random.Random(13).randbytes(SIZE)


@pytest.fixture
def source(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    return path


def digest_of(data: bytes) -> str:
    hasher = TreeHasher()
    hasher.update(data)
    return hasher.digest().hex()


class Nodes:
    """Servers on one bucket, started on demand, all stopped at the end."""

    def __init__(self, seaweed: Seaweed, bucket: str, tmp_path: Path) -> None:
        self.args = s3_server_args(seaweed, bucket)
        self.tmp_path, self.started = tmp_path, 0
        self.running: list[ServerProcess] = []

    def start(self, *extra: str) -> ServerProcess:
        self.started += 1
        log = self.tmp_path / f"node{self.started}.log"
        node = ServerProcess(self.tmp_path, *self.args, *extra, log=log)
        self.running.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.running:
            if node.proc.poll() is None:
                node.stop()


@pytest.fixture
def nodes(seaweed: Seaweed, bucket: str, tmp_path: Path) -> Iterator[Nodes]:
    group = Nodes(seaweed, bucket, tmp_path)
    yield group
    group.stop_all()


def ok(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_put_through_one_node_is_read_listed_and_moved_through_another(
    nodes: Nodes, source: Path, payload: bytes, tmp_path: Path
) -> None:
    a, b = nodes.start(), nodes.start()
    ok(run_cli("mkdir", a.remote("in")))
    ok(run_cli("put", str(source), a.remote("in/big.bin")))
    assert "big.bin" in ok(run_cli("ls", b.remote("in/")))
    stat = json.loads(ok(run_cli("stat", "--json", b.remote("in/big.bin"))))
    assert (stat["size"], stat["digest"]) == (SIZE, digest_of(payload))
    ok(run_cli("get", b.remote("in/big.bin"), str(tmp_path / "copy.bin")))
    assert (tmp_path / "copy.bin").read_bytes() == payload
    ok(run_cli("mv", b.remote("in/big.bin"), "moved.bin"))
    ok(run_cli("rm", a.remote("in/")))
    assert [line.split()[-1] for line in ok(run_cli("ls", a.remote(""))).splitlines()] == [
        "moved.bin"
    ]


def test_udp_and_tftp_serve_the_same_bucket(
    nodes: Nodes, source: Path, payload: bytes, tmp_path: Path
) -> None:
    a = nodes.start("--tftp-port", "0")
    b = nodes.start()
    ok(run_cli("put", str(source), "udp://" + b.remote("via-udp.bin")))
    ok(run_cli("get", "udp://" + a.remote("via-udp.bin"), str(tmp_path / "u.bin")))
    assert (tmp_path / "u.bin").read_bytes() == payload
    tftp = a.ready_line.split("tftp://")[1].split()[0]
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    out = tmp_path / "t.bin"
    subprocess.run(
        [curl, "-sS", "--tftp-blksize", "1428", "-o", str(out), f"tftp://{tftp}/via-udp.bin"],
        check=True, timeout=120,
    )  # fmt: skip
    assert out.read_bytes() == payload


def test_two_writers_of_one_name_through_two_nodes_leave_one_whole_version(
    nodes: Nodes, tmp_path: Path
) -> None:
    a, b = nodes.start(), nodes.start()
    versions = []
    for index in range(2):
        path = tmp_path / f"v{index}.bin"
        path.write_bytes(random.Random(index).randbytes(2 * CHUNK_BYTES + index))
        versions.append(path)
    writers = [
        subprocess.Popen([*CLI, "put", "-q", str(path), node.remote("same.bin")])
        for path, node in zip(versions, (a, b), strict=True)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    ok(run_cli("get", a.remote("same.bin"), str(tmp_path / "got.bin")))
    got = (tmp_path / "got.bin").read_bytes()
    assert got in (versions[0].read_bytes(), versions[1].read_bytes())


def test_a_restarted_node_loses_nothing(
    nodes: Nodes, source: Path, payload: bytes, tmp_path: Path
) -> None:
    first = nodes.start()
    ok(run_cli("put", str(source), first.remote("kept.bin")))
    assert first.stop() == 0
    again = nodes.start()
    ok(run_cli("get", again.remote("kept.bin"), str(tmp_path / "kept.bin")))
    assert (tmp_path / "kept.bin").read_bytes() == payload


def stored_parts(seaweed: Seaweed, bucket: str) -> int:
    """Parts stored so far of the one multipart upload below ``bucket``."""
    name, _, prefix = bucket.partition("/")
    client = seaweed.client()
    found = client.list_multipart_uploads(Bucket=name, Prefix=prefix + "/").get("Uploads", [])  # type: ignore[attr-defined]
    if not found:
        return 0
    upload = found[0]
    parts = client.list_parts(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])  # type: ignore[attr-defined]
    return len(parts.get("Parts", []))


def recorded_parts(seaweed: Seaweed, bucket: str) -> int:
    """Parts the one resumable upload below ``bucket`` has journaled in its record
    (what a resume builds on: a part is stored first, then recorded)."""
    name, _, prefix = bucket.partition("/")
    client = seaweed.client()
    listed = client.list_objects_v2(Bucket=name, Prefix=prefix + "/.ftransfer-part-")  # type: ignore[attr-defined]
    for item in listed.get("Contents", []):
        body = client.get_object(Bucket=name, Key=item["Key"])["Body"].read()  # type: ignore[attr-defined]
        return len(json.loads(body)["parts"])
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def haproxy() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if found is None:
        pytest.skip("HAProxy is not installed (Debian: haproxy)")
    return found


def test_kill_a_node_mid_put_and_resume_through_another_behind_haproxy(
    nodes: Nodes, haproxy: str, seaweed: Seaweed, bucket: str, source: Path, payload: bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The client talks to one address (HAProxy, TCP mode); node A dies by kill -9
    in the middle of a put; the same command again goes to node B and resumes
    after the parts A stored."""
    a, b = nodes.start(), nodes.start()
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n"
        "  timeout server 60s\n  retries 2\n  option redispatch\n"
        f"frontend files\n  bind 127.0.0.1:{port}\n  default_backend nodes\n"
        "backend nodes\n  balance first\n"
        f"  server a 127.0.0.1:{a.port}\n  server b 127.0.0.1:{b.port}\n"
    )
    proxy = subprocess.Popen([haproxy, "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(port), "HAProxy to listen")
        with open(Path(os.environ["XDG_CONFIG_HOME"]) / "ftransfer" / "known_hosts", "a") as f:
            f.write(f"127.0.0.1:{port} {a.fingerprint}\n")  # (the nodes share their key)
        remote = f"127.0.0.1:{port}/big.bin"
        cut = subprocess.Popen(
            [*CLI, "put", "-q", "--limit-rate", SLOW, str(source), remote],
            stderr=subprocess.PIPE,
        )
        wait_until(lambda: recorded_parts(seaweed, bucket) >= 2, "two parts recorded")
        a.kill()
        assert cut.wait(timeout=60) != 0
        assert cut.stderr is not None
        cut.stderr.close()
        done = run_cli("put", "--json", str(source), remote)
        result = json.loads(ok(done).splitlines()[-1])
        assert int(result["resumed_from"]) >= 2 * CHUNK_BYTES
        assert result["digest"] == digest_of(payload)
        ok(run_cli("get", b.remote("big.bin"), str(tmp_path / "back.bin")))
        assert (tmp_path / "back.bin").read_bytes() == payload
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_misconfigured_store_stops_the_server_at_start_with_the_reason(
    seaweed: Seaweed, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve = [*CLI, "serve", "--port", "0", *s3_server_args(seaweed, bucket)]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    done = subprocess.run(serve, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    assert b"refused the server's credentials" in done.stderr
    assert b"wrong" not in done.stderr  # (a secret is never shown)
    monkeypatch.undo()
    for key, value in seaweed.environment().items():
        monkeypatch.setenv(key, value)
    missing = [*CLI, "serve", "--port", "0", "--store", "s3://no-such-bucket"]
    done = subprocess.run(
        [*missing, "--s3-endpoint", seaweed.endpoint], capture_output=True, timeout=60, check=False
    )
    assert done.returncode != 0 and b"no bucket 'no-such-bucket'" in done.stderr


def test_a_store_that_goes_away_mid_put_fails_it_clearly_and_the_node_lives(
    own_seaweed: Seaweed, source: Path, tmp_path: Path
) -> None:
    node = ServerProcess(
        tmp_path, *s3_server_args(own_seaweed, "going-away/x"), log=tmp_path / "node.log"
    )
    try:
        put = subprocess.Popen(
            [*CLI, "put", "-q", "--limit-rate", SLOW, str(source), node.remote("big.bin")],
            stderr=subprocess.PIPE,
        )
        wait_until(lambda: stored_parts(own_seaweed, "going-away/x") >= 1, "a part stored")
        own_seaweed.kill()
        assert put.wait(timeout=120) == ExitCode.LOCAL_IO
        assert put.stderr is not None
        message = put.stderr.read()
        put.stderr.close()
        assert b"big.bin: the object store" in message, message  # (unreachable, or failed)
        assert node.proc.poll() is None  # the node still serves (what it can)
        done = run_cli("ls", node.remote(""))
        assert done.returncode == ExitCode.LOCAL_IO and b"the object store" in done.stderr
    finally:
        node.stop()


# ---- the everyday workflow, on a bucket -------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES, CHUNK_BYTES + 1, 2 * CHUNK_BYTES + 99])
def test_put_then_get_is_byte_exact_at_every_part_boundary(
    nodes: Nodes, tmp_path: Path, size: int
) -> None:
    node = nodes.start()
    data = random.Random(size).randbytes(size)
    (tmp_path / "f.bin").write_bytes(data)
    ok(run_cli("put", str(tmp_path / "f.bin"), node.remote("f.bin")))
    ok(run_cli("get", node.remote("f.bin"), str(tmp_path / "back.bin")))
    assert (tmp_path / "back.bin").read_bytes() == data


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_tree_goes_up_and_comes_back_whole_from_a_bucket(
    nodes: Nodes, tmp_path: Path, transport: str
) -> None:
    """Structure, empty directories, mtimes and the exec bit survive a bucket; a
    second put -r --update of the unchanged tree sends no file."""
    from test_recursive import assert_same_tree, make_tree

    files = make_tree(tmp_path / "src")
    via = ["--udp"] if transport == "udp" else []
    a, b = nodes.start(), nodes.start()
    ok(run_cli("mkdir", a.remote("up")))
    ok(run_cli("put", "-r", "-q", *via, str(tmp_path / "src"), a.remote("up/")))
    ok(run_cli("get", "-r", "-q", *via, b.remote("up/src"), str(tmp_path / "copy")))
    assert_same_tree(tmp_path / "copy", files)
    again = run_cli("put", "-r", "--update", "--json", *via, str(tmp_path / "src"), b.remote("up/"))
    assert ok(again) == "" and b"already there" in again.stderr


def test_many_small_files_and_many_clients_on_a_bucket(nodes: Nodes, tmp_path: Path) -> None:
    a, b = nodes.start(), nodes.start()
    src = tmp_path / "many"
    src.mkdir()
    contents = {f"f{i:03d}": os.urandom(4096) for i in range(200)}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    ok(run_cli("put", "-r", "-q", str(src), a.remote("")))
    listing = ok(run_cli("ls", "--json", b.remote("many")))
    assert sorted(json.loads(line)["name"] for line in listing.splitlines()) == sorted(contents)
    blobs = [os.urandom(300_000) for _ in range(10)]
    for i, data in enumerate(blobs):
        (tmp_path / f"s{i}").write_bytes(data)
    writers = [
        subprocess.Popen([*CLI, "put", "-q", str(tmp_path / f"s{i}"), (a, b)[i % 2].remote("same")])
        for i in range(len(blobs))
    ]
    assert [w.wait(timeout=120) for w in writers] == [0] * len(blobs)
    ok(run_cli("get", a.remote("same"), str(tmp_path / "same")))
    assert (tmp_path / "same").read_bytes() in blobs
    top = ok(run_cli("ls", b.remote("")))
    assert sorted(line.split()[-1] for line in top.splitlines()) == ["many/", "same"]
