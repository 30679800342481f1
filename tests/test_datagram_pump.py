"""The datagram adapters' batching: GSO runs out, GRO batches cut apart, on real
sockets, for the asyncio pump and the blocking runner alike."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys

import pytest

from ftransfer.io.datagram import DatagramPump
from ftransfer.io.udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, _run_end, open_udp_socket

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="UDP GSO/GRO are Linux's")


def _runs(sizes: list[int], to: list[int] | None = None) -> list[int]:
    ports = to or [1] * len(sizes)
    datagrams = [(bytes(n), ("127.0.0.1", port)) for n, port in zip(sizes, ports, strict=True)]
    lengths, i = [], 0
    while i < len(datagrams):
        j = _run_end(datagrams, i)
        lengths.append(j - i)
        i = j
    return lengths


def test_runs_are_equal_sized_with_at_most_a_shorter_last() -> None:
    assert _runs([100, 100, 100]) == [3]
    assert _runs([100, 100, 40, 100]) == [3, 1]  # the short one ends its run
    assert _runs([40, 100, 100]) == [1, 2]  # a longer one cannot follow
    assert _runs([100]) == [1]
    assert _runs([100, 100, 0]) == [2, 1]  # GSO would silently drop an empty segment
    assert _runs([100, 100, 100], to=[1, 1, 2]) == [2, 1]  # one run, one address


def test_runs_respect_the_kernel_limits() -> None:
    assert _runs([10] * (GSO_MAX_SEGMENTS + 1)) == [GSO_MAX_SEGMENTS, 1]
    big = 1434
    per_run = GSO_MAX_BYTES // big
    assert _runs([big] * (per_run + 1)) == [per_run, 1]


class _Collector:
    def __init__(self, expected: int) -> None:
        self.got: list[bytes] = []
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()

    def on_datagram(self, view: memoryview, _address: tuple[str, int]) -> None:
        self.got.append(bytes(view))

    def on_batch(self) -> None:
        if len(self.got) >= self.expected and not self.done.done():
            self.done.set_result(None)


def _datagrams() -> list[bytes]:
    """Runs of equal sizes, short tails, a lone small one, and an empty one."""
    out = [bytes([i % 251]) * 1434 for i in range(100)]
    out += [b"tail" * 10, b"x" * 500, b"x" * 500, b"", b"y" * 1434]
    return out


async def _round_trip(sender_sock: socket.socket) -> tuple[DatagramPump, DatagramPump, list[bytes]]:
    receiver_sock = open_udp_socket("127.0.0.1", 0, connect=False)
    sender_sock.connect(receiver_sock.getsockname())
    expected = _datagrams()
    collector = _Collector(len(expected))
    receiver = DatagramPump(receiver_sock, collector.on_datagram, collector.on_batch, lambda: None)
    sender = DatagramPump(sender_sock, lambda v, a: None, lambda: None, lambda: None)
    address = receiver_sock.getsockname()
    sender.send([(d, (str(address[0]), int(address[1]))) for d in expected])
    await asyncio.wait_for(collector.done, 10)
    assert sender.socket.send_drops == 0
    assert collector.got == expected  # every datagram, intact, in order
    return sender, receiver, collector.got


@linux_only
def test_segmented_sends_arrive_whole_and_in_order() -> None:
    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sender, receiver, _got = await _round_trip(sock)
        assert sender.gso and receiver.gro  # the paths under test were really taken
        sender.close()
        receiver.close()

    asyncio.run(main())


class _NoGsoSocket(socket.socket):
    """A socket on a route that refuses segmentation (as a NIC without checksum
    offload does, with EIO)."""

    refused = 0

    def sendmsg(self, *args: object, **kwargs: object) -> int:
        self.refused += 1
        raise OSError(errno.EIO, "segmentation refused")


@linux_only
def test_a_route_that_refuses_gso_falls_back_to_single_sends() -> None:
    async def main() -> None:
        sock = _NoGsoSocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sender, receiver, _got = await _round_trip(sock)
        assert not sender.gso and sock.refused == 1  # tried once, then never again
        sender.close()
        receiver.close()

    asyncio.run(main())


class _TwoEventCore:
    """A datagram core with two events and one datagram to send."""

    def __init__(self, to: tuple[str, int]) -> None:
        self.events: list[object] = ["bad", "good"]
        self.to = to

    def receive_datagram(self, data: bytes | memoryview, addr: tuple[str, int], now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        return [(b"still sent", self.to)]

    def next_event(self) -> object | None:
        return self.events.pop(0) if self.events else None

    def get_timer(self) -> float | None:
        return 1e9

    def handle_timer(self, now: float) -> None:
        pass


def test_a_handler_that_raises_is_logged_and_the_step_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by review: an exception from one event's handler ended the step, so the
    core's datagrams for every peer were lost and its timer never re-armed."""
    from ftransfer.io.datagram import CoreDriver

    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(30)  # a safety net: the datagram is sent before step() returns
    handled: list[object] = []

    def on_event(event: object) -> None:
        if event == "bad":
            raise ValueError("a bug in one handler")
        handled.append(event)

    async def main() -> None:
        sock = open_udp_socket("127.0.0.1", 0, connect=False)
        driver = CoreDriver(_TwoEventCore(peer.getsockname()), sock, on_event)
        driver.step()
        assert driver.pump._timer_at == 1e9  # re-armed
        driver.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert handled == ["good"]
    assert peer.recv(100) == b"still sent"
    assert "a bug in one handler" in caplog.text
    peer.close()
