"""Receive buffers: the pool lends, takes back and keeps at most its cap; a
connection maps nothing before its first read and gives everything back when lost."""

from __future__ import annotations

import asyncio

import pytest

from ftransfer.io.buffers import SMALL_BUFFER_BYTES, BufferPool, MappedBuffer
from ftransfer.io.stream import FrameStream
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.connection import Connection, Role
from ftransfer.proto.tcp.frames import FrameType, encode, header


def test_the_pool_reuses_what_comes_back_and_keeps_no_more_than_its_cap() -> None:
    pool = BufferPool(size=4096, keep=2)
    lent = [pool.take() for _ in range(3)]
    assert pool.lent == 3 and pool.kept == 0
    assert all(len(b.view) == 4096 for b in lent)
    for buffer in lent:
        pool.give(buffer)
    assert pool.lent == 0 and pool.kept == 2
    with pytest.raises(ValueError):
        lent[2].view[0]  # over the cap: unmapped, not kept
    again = [pool.take(), pool.take()]
    assert {id(b) for b in again} == {id(lent[0]), id(lent[1])}  # reused, not mapped anew
    fresh = pool.take()
    assert all(fresh is not b for b in lent)
    for buffer in [*again, fresh]:
        pool.give(buffer)
    pool.clear()
    assert pool.kept == 0 and pool.lent == 0
    with pytest.raises(ValueError):
        again[0].view[0]  # cleared: unmapped


def test_a_released_buffer_lives_on_while_a_slice_of_it_is_held() -> None:
    buffer = MappedBuffer(4096)
    buffer.view[:3] = b"abc"
    held = buffer.view[:3]  # the core keeps a view of the last read
    buffer.release()  # must not raise: unmapped when ``held`` dies
    assert bytes(held) == b"abc"


class _Transport(asyncio.Transport):
    """Just enough transport for FrameStream's callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass


def _deliver(stream: FrameStream, data: bytes) -> None:
    view = stream.get_buffer(-1)
    view[: len(data)] = data
    stream.buffer_updated(len(data))
    while stream.poll_event() is not None:
        pass


async def _a_connection_uploading_then_lost() -> list[tuple[int, int]]:
    """(buffer length offered to the kernel, large buffers lent) at each step."""
    pool = BufferPool(size=1 << 17, keep=1)
    stream = FrameStream(Connection(Role.SERVER), pool, idle_timeout_s=60)
    stream.connection_made(_Transport())
    steps = [(0, pool.lent)]
    _deliver(stream, encode(ev.HelloOffered(min_version=4, max_version=4)))
    steps.append((len(stream.get_buffer(-1)), pool.lent))
    put = ev.PutRequested(path="f", size=100, mtime_ns=-1, mode=0o644, exclusive=False)
    _deliver(stream, encode(put) + header(FrameType.DATA, 100) + b"x" * 10)
    steps.append((len(stream.get_buffer(-1)), pool.lent))  # file bytes are streaming in
    stream.connection_lost(None)
    steps.append((0, pool.lent))
    return steps


def test_a_connection_borrows_a_large_buffer_only_while_a_file_streams_in() -> None:
    steps = asyncio.run(_a_connection_uploading_then_lost())
    assert steps == [(0, 0), (SMALL_BUFFER_BYTES, 0), (1 << 17, 1), (0, 0)]
