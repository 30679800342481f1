"""Server operations: the one request -> storage policy, over a MemoryStore."""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from test_names import BAD_NAMES

from ftransfer.checksum import digest_bytes, hex_digest
from ftransfer.config import MAX_ERROR_MESSAGE_BYTES
from ftransfer.errors import (
    Exists,
    FtransferError,
    IntegrityError,
    NotFound,
    PathRefused,
    ReadOnly,
    StorageIOError,
    TooLarge,
)
from ftransfer.proto.events import Failed
from ftransfer.proto.tcp.frames import encode
from ftransfer.server.operations import Operations, Policy, Principal, Requester
from ftransfer.storage.base import Store
from ftransfer.storage.entry import EntryKind
from ftransfer.storage.local import LocalStore
from ftransfer.storage.memory import MemoryStore

WHO = Requester(
    peer="192.0.2.7:4000", transport="tcp", principal=Principal(write=True, delete=True)
)


def make(
    *, read_only: bool = False, max_file_bytes: int = 1 << 30
) -> tuple[Operations, MemoryStore]:
    store = MemoryStore()
    store.put_file("old.txt", b"old content")
    store.put_file("sub/inner.txt", b"inner")
    policy = Policy(read_only=read_only, max_file_bytes=max_file_bytes, anonymous_write=True)
    return Operations(store, policy), store


def upload(ops: Operations, path: str, data: bytes) -> bytes:
    with ops.upload(WHO, path, size=len(data)) as up:
        up.write(data)
        return up.commit(digest_bytes(data))


def every_request(ops: Operations, name: str) -> list[Callable[[], object]]:
    return [
        lambda: ops.download(WHO, name),
        lambda: ops.upload(WHO, name, size=1),
        lambda: ops.stat(WHO, name),
        lambda: list(ops.listing(WHO, name)),
        lambda: ops.remove(WHO, name),
        lambda: ops.mkdir(WHO, name, parents=True),
        lambda: ops.move(WHO, name, "new", exclusive=False),
        lambda: ops.move(WHO, "old.txt", name, exclusive=False),
    ]


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n], ids=repr)
def test_every_request_refuses_every_bad_name(name: str) -> None:
    ops, store = make()
    for request in every_request(ops, name):
        with pytest.raises(PathRefused):
            request()
    assert store.files() == {"old.txt": b"old content", "sub/inner.txt": b"inner"}


def test_a_name_is_refused_before_permission_and_permission_before_the_store() -> None:
    ops, _store = make(read_only=True, max_file_bytes=1)
    with pytest.raises(PathRefused):
        ops.upload(WHO, "../x", size=10)  # not ReadOnly: the name is looked at first
    with pytest.raises(ReadOnly):
        ops.upload(WHO, "missing/dir/x", size=10)  # not TooLarge, not NotFound
    ops, _store = make(max_file_bytes=5)
    with pytest.raises(TooLarge):
        ops.upload(WHO, "missing/dir/x", size=10)  # the limit before the store's NotFound
    with pytest.raises(NotFound):
        ops.upload(WHO, "missing/dir/x", size=5)


def test_read_only_refuses_every_change_and_serves_reads() -> None:
    ops, _store = make(read_only=True)
    changes: list[Callable[[], object]] = [
        lambda: ops.upload(WHO, "new", size=1),
        lambda: ops.remove(WHO, "old.txt"),
        lambda: ops.mkdir(WHO, "d", parents=False),
        lambda: ops.move(WHO, "old.txt", "moved", exclusive=False),
    ]
    for change in changes:
        with pytest.raises(ReadOnly):
            change()
    with ops.download(WHO, "old.txt") as download:
        assert download.read(0, 100) == b"old content" and download.fileno() is None
    assert ops.stat(WHO, "")[0].kind is EntryKind.DIRECTORY


def test_uploads_commit_once_and_a_failed_one_leaves_nothing() -> None:
    ops, store = make()
    assert upload(ops, "new.bin", b"payload") == digest_bytes(b"payload")
    with ops.upload(WHO, "old.txt", size=3) as up:
        up.write(b"abc")
        with pytest.raises(IntegrityError):
            up.commit(digest_bytes(b"xyz"))
        assert up.ended
    with ops.upload(WHO, "dropped", size=3) as up:
        up.write(b"ab")  # the with block ends without a commit: aborted
    assert store.files() == {
        "old.txt": b"old content",
        "sub/inner.txt": b"inner",
        "new.bin": b"payload",
    }
    with pytest.raises(Exists):
        ops.upload(WHO, "new.bin", size=1, exclusive=True)


def test_a_storage_failure_mid_upload_ends_it() -> None:
    ops, store = make()
    with ops.upload(WHO, "f", size=4) as up:
        store.fail_writes(StorageIOError("disk on fire"))
        with pytest.raises(StorageIOError):
            up.write(b"data")
        assert up.ended
    store.fail_writes(None)
    assert "f" not in store.files()


def test_stat_gives_the_digest_of_files_only() -> None:
    ops, _store = make()
    entry, digest = ops.stat(WHO, "old.txt")
    assert entry.kind is EntryKind.FILE and digest == digest_bytes(b"old content")
    entry, digest = ops.stat(WHO, "sub/")
    assert entry.kind is EntryKind.DIRECTORY and digest is None


def test_one_log_line_per_request_with_who_what_and_how_it_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops, _store = make()
    with caplog.at_level(logging.INFO, logger="ftransfer.server"):
        with pytest.raises(PathRefused):
            ops.download(WHO, "a/../b")
        upload(ops, "new.bin", b"12345")
        with ops.download(WHO, "new.bin") as download:
            download.sent(digest_bytes(b"12345"))
        list(ops.listing(WHO, ""))
        with pytest.raises(FtransferError):
            ops.remove(WHO, "missing")
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("192.0.2.7:4000 tcp get a/../b: refused: ")
    assert lines[1].startswith("192.0.2.7:4000 tcp put new.bin: 5 bytes in ")
    assert "digest " + digest_bytes(b"12345").hex() in lines[1]
    assert lines[2].startswith("192.0.2.7:4000 tcp get new.bin: 5 bytes in ")
    assert lines[3] == "192.0.2.7:4000 tcp ls /: 3 entries"
    assert lines[4].startswith("192.0.2.7:4000 tcp rm missing: refused: ")
    assert len(lines) == 5


@pytest.mark.parametrize("end", ["abort", "fail"])
def test_an_abort_after_the_store_committed_does_not_log_a_failure(
    end: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UDP commit runs in a worker thread; a CLOSE or the give-up timer can end
    the upload on the event loop between the store's commit and its log line. The
    file is committed: the one log line must say so, not "aborted" or "failed"."""
    ops, store = make()
    logging_commit, ended = threading.Event(), threading.Event()

    def held_hex(digest: bytes) -> str:  # the commit's log line is being written
        logging_commit.set()
        ended.wait(30.0)
        return hex_digest(digest)

    monkeypatch.setattr("ftransfer.server.operations.hex_digest", held_hex)
    data = b"committed"
    up = ops.upload(WHO, "new.bin", size=len(data))
    up.write(data)
    committer = threading.Thread(target=up.commit, args=(digest_bytes(data),))
    with caplog.at_level(logging.INFO, logger="ftransfer.server"):
        committer.start()
        try:
            assert logging_commit.wait(30.0)
            if end == "abort":
                up.abort("the client closed")
            else:
                up.fail(StorageIOError("given up"))
        finally:
            ended.set()
        committer.join(30.0)
    assert store.files()["new.bin"] == data
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("192.0.2.7:4000 tcp put new.bin: 9 bytes in "), line


# ---- error messages: at most 1,024 bytes on the wire, whole characters, the reason kept ----

LONG_NAMES = {
    "one component of 1,365 euro signs": ("€" * 1365, "component longer than 255 bytes"),
    "a 4,095-byte path of euro signs": ("/".join(["€" * 85] * 16), "no such file or directory"),
    "a 4,047-byte path of 4-byte characters": (
        "/".join(["\U0001f600" * 63] * 16),
        "no such file or directory",
    ),
    "a control character after 2,900 bytes": (
        "/".join(["€" * 80] * 12) + "/x\x01",
        "control characters are not allowed",
    ),
    "a path over 4,096 bytes": ("€" * 2000, "name longer than 4096 bytes"),
}


@pytest.mark.parametrize("store_kind", ["memory", "local"])
@pytest.mark.parametrize("case", list(LONG_NAMES))
def test_a_stat_of_a_long_name_is_refused_in_one_whole_frame_with_its_reason(
    case: str, store_kind: str, tmp_path: Path
) -> None:
    name, reason = LONG_NAMES[case]
    store: Store = MemoryStore() if store_kind == "memory" else LocalStore(tmp_path)
    ops = Operations(store, Policy())
    with pytest.raises(FtransferError) as refused:
        ops.stat(WHO, name)
    store.close()
    frame = encode(Failed(code=refused.value.code, message=str(refused.value)))
    code, text = struct.unpack(">H", frame[5:7])[0], frame[7:]
    assert code == refused.value.code and code in (10, 13)
    assert len(text) <= MAX_ERROR_MESSAGE_BYTES
    message = text.decode("utf-8")  # strict: no character cut in two
    assert message.lower().endswith(reason), message  # the name is cut, never the reason
    if "longer than 4096" not in reason:
        assert message.startswith(name[:40]) and "..." in message  # the name, shortened
