"""Group commit (server/commits.py): batches, reply order, settle, close. The worker
thread is replaced by a future the test resolves, so every interleaving is chosen
by the test, not by the scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ftransfer.checksum import digest_bytes
from ftransfer.errors import FtransferError
from ftransfer.proto.tcp import events as ev
from ftransfer.server import commits
from ftransfer.server.commits import GroupCommit, Outcome, commit_batch
from ftransfer.server.operations import Operations, Policy, Principal, Requester, Upload
from ftransfer.storage.memory import MemoryStore

WHO = Requester(peer="192.0.2.7:4000", transport="tcp", principal=Principal(write=True))


def operations() -> tuple[Operations, MemoryStore]:
    store = MemoryStore()
    return Operations(store, Policy(anonymous_write=True)), store


def ended(ops: Operations, name: str, data: bytes, *, exclusive: bool = False) -> Upload:
    upload = ops.upload(WHO, name, size=len(data), exclusive=exclusive)
    upload.write(data)
    return upload


class Worker:
    """Stands in for the worker thread: each batch waits until the test runs it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._gates: list[tuple[asyncio.Future[None], asyncio.Future[None]]] = []

    def run(
        self, function: Callable[..., list[Outcome]], batch: list[tuple[Upload, bytes]]
    ) -> Coroutine[Any, Any, list[Outcome]]:
        self.batches.append([str(upload.name) for upload, _ in batch])
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[None] = loop.create_future()
        done: asyncio.Future[None] = loop.create_future()
        self._gates.append((gate, done))

        async def later() -> list[Outcome]:
            await gate
            try:
                return function(batch)
            finally:
                done.set_result(None)

        return later()

    async def release(self) -> None:
        """Let the oldest waiting batch run; return once its outcome is taken (the
        group commit goes on from the same step as the batch's return)."""
        for _ in range(100):  # the batch's task reaches its hand-off
            if self._gates:
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError("no batch was handed to the worker")
        gate, done = self._gates.pop(0)
        gate.set_result(None)
        await done
        await asyncio.sleep(0)  # (the group commit's step after the batch)


def replies(sent: list[ev.Event]) -> list[str]:
    said = []
    for event in sent:
        assert isinstance(event, ev.PutCommitted | ev.Failed)
        said.append("ok" if isinstance(event, ev.PutCommitted) else f"error {event.code}")
    return said


async def _batches_form_while_one_runs() -> None:
    ops, store = operations()
    sent: list[ev.Event] = []
    worker = Worker()
    group = GroupCommit(sent.append, worker.run)
    group.add(ended(ops, "a", b"a"), digest_bytes(b"a"))
    await asyncio.sleep(0)
    for name in ("b", "c", "d"):  # they end while a's commit runs
        group.add(ended(ops, name, name.encode()), digest_bytes(name.encode()))
    assert group.pending == 4 and sent == []  # nothing is answered before its commit
    await worker.release()
    assert replies(sent) == ["ok"] and store.files() == {"a": b"a"}
    assert worker.batches == [["a"], ["b", "c", "d"]]  # one hand-off for the three
    await worker.release()
    assert replies(sent) == ["ok"] * 4 and group.pending == 0
    assert store.files() == {"a": b"a", "b": b"b", "c": b"c", "d": b"d"}


def test_uploads_that_end_during_a_commit_form_the_next_batch() -> None:
    asyncio.run(_batches_form_while_one_runs())


async def _a_failed_commit_is_answered_in_its_place() -> None:
    ops, store = operations()
    sent: list[ev.Event] = []
    worker = Worker()
    group = GroupCommit(sent.append, worker.run)
    group.add(ended(ops, "x", b"1"), digest_bytes(b"1"))
    group.add(ended(ops, "y", b"2"), digest_bytes(b"not what was sent"))  # corrupted
    group.add(ended(ops, "x", b"3", exclusive=True), digest_bytes(b"3"))  # x exists by now
    group.add(ended(ops, "z", b"4"), digest_bytes(b"4"))
    await worker.release()
    await worker.release()
    assert replies(sent) == ["ok", "error 30", "error 11", "ok"]
    assert store.files() == {"x": b"1", "z": b"4"}  # the refused ones: nothing of them


def test_a_failed_commit_is_answered_in_its_place_and_the_others_go_on() -> None:
    asyncio.run(_a_failed_commit_is_answered_in_its_place())


async def _settle_waits_for_every_batch() -> None:
    ops, _store = operations()
    sent: list[ev.Event] = []
    worker = Worker()
    group = GroupCommit(sent.append, worker.run)
    group.add(ended(ops, "a", b"a"), digest_bytes(b"a"))
    await asyncio.sleep(0)
    group.add(ended(ops, "b", b"b"), digest_bytes(b"b"))
    settled = asyncio.ensure_future(group.settle())
    await worker.release()
    assert not settled.done()  # b's batch is still to run
    await worker.release()
    await settled
    assert replies(sent) == ["ok", "ok"]


def test_settle_returns_only_when_every_upload_is_answered() -> None:
    asyncio.run(_settle_waits_for_every_batch())


async def _close_aborts_what_waits() -> None:
    ops, store = operations()
    sent: list[ev.Event] = []
    worker = Worker()
    group = GroupCommit(sent.append, worker.run)
    group.add(ended(ops, "running", b"r"), digest_bytes(b"r"))
    await asyncio.sleep(0)
    group.add(ended(ops, "waiting", b"w"), digest_bytes(b"w"))
    closing = asyncio.ensure_future(group.close())
    await asyncio.sleep(0)
    assert not closing.done()  # the running batch uses its files: waited for
    await worker.release()
    await closing
    assert store.files() == {"running": b"r"}
    assert worker.batches == [["running"]]


def test_close_aborts_uploads_not_yet_committed_and_waits_for_the_running_batch() -> None:
    asyncio.run(_close_aborts_what_waits())


def test_the_waiting_uploads_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits, "MAX_PENDING", 2)

    async def scenario() -> None:
        ops, _store = operations()
        worker = Worker()
        group = GroupCommit(lambda event: None, worker.run)
        group.add(ended(ops, "a", b"a"), digest_bytes(b"a"))
        await asyncio.sleep(0)
        group.add(ended(ops, "b", b"b"), digest_bytes(b"b"))
        assert not group.full
        group.add(ended(ops, "c", b"c"), digest_bytes(b"c"))
        assert group.full  # the session settles before it takes another
        await worker.release()
        await worker.release()
        await group.close()

    asyncio.run(scenario())


def test_an_unexpected_failure_is_an_internal_error_for_that_upload_only() -> None:
    ops, store = operations()
    good = ended(ops, "good", b"g")
    bad = ended(ops, "bad", b"b")

    def broken(expected_digest: bytes) -> bytes:
        raise RuntimeError("a bug")

    bad.commit = broken  # type: ignore[method-assign]
    outcomes = commit_batch([(bad, digest_bytes(b"b")), (good, digest_bytes(b"g"))])
    assert isinstance(outcomes[0], FtransferError) and "RuntimeError" in str(outcomes[0])
    assert outcomes[1] == digest_bytes(b"g") and store.files() == {"good": b"g"}


def test_after_a_reply_cannot_be_sent_nothing_more_is_committed_and_close_aborts_the_rest() -> None:
    async def scenario() -> None:
        ops, store = operations()
        worker = Worker()

        def gone(event: ev.Event) -> None:
            raise ConnectionError("the connection is gone")

        group = GroupCommit(gone, worker.run)
        group.add(ended(ops, "a", b"a"), digest_bytes(b"a"))
        await asyncio.sleep(0)
        group.add(ended(ops, "b", b"b"), digest_bytes(b"b"))
        await worker.release()  # a commits; its reply fails to go out
        assert worker.batches == [["a"]]  # b is not handed to a thread after that
        await group.close()
        assert store.files() == {"a": b"a"}  # (a was durable before its reply)

    asyncio.run(scenario())
