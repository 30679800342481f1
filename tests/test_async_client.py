"""``AsyncClient`` over every transport, against a real ``Server`` on the same loop.

The blocking ``Client`` is exercised through the CLI everywhere else; this is the
asyncio flavour (client/datagram.py runs its UDP and TFTP calls): the same results,
the same refusals, and a cancelled UDP upload that tells the server, which drops
the upload at once (no give-up wait).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from conftest import temporaries

import ftransfer
from ftransfer._records import evolve
from ftransfer.client.result import Progress

BODY = os.urandom(300_000)
SAFETY_S = 30.0
"""A cap on waiting for what must happen; the test never sleeps."""


def _config(root: Path) -> ftransfer.ServerConfig:
    return ftransfer.ServerConfig(
        root=str(root), port=0, tftp_port=0, fsync=False, anonymous_write=True, tftp_writable=True
    )


def _url(server: ftransfer.Server, scheme: str) -> str:
    port = {"tcp": server.tcp_port, "udp": server.udp_port, "tftp": server.tftp_port}[scheme]
    return f"{scheme}://127.0.0.1:{port}"


@pytest.mark.parametrize("scheme", ["tcp", "udp", "tftp"])
def test_put_and_get_over_every_transport(tmp_path: Path, served: Path, scheme: str) -> None:
    source, copy = tmp_path / "a.bin", tmp_path / "copy.bin"
    source.write_bytes(BODY)

    async def main() -> tuple[ftransfer.TransferResult, ftransfer.TransferResult]:
        async with (
            ftransfer.Server(_config(served)) as server,
            ftransfer.AsyncClient(_url(server, scheme)) as client,
        ):
            put = await client.put(str(source), f"{scheme}.bin")
            got = await client.get(f"{scheme}.bin", str(copy))
            return put, got

    put, got = asyncio.run(asyncio.wait_for(main(), SAFETY_S))
    assert (served / f"{scheme}.bin").read_bytes() == BODY == copy.read_bytes()
    assert put.transport == got.transport == scheme and put.bytes == got.bytes == len(BODY)
    assert put.digest == got.digest
    assert put.verified == (scheme != "tftp")  # TFTP carries no checksum: never claimed


def test_udp_answers_list_and_stat_and_tftp_says_it_cannot(served: Path) -> None:
    (served / "f.txt").write_bytes(b"hello")

    async def main() -> tuple[list[str], int]:
        async with ftransfer.Server(_config(served)) as server:
            async with ftransfer.AsyncClient(_url(server, "udp")) as client:
                names = [e.name for e in await client.list()]
                size = (await client.stat("f.txt")).size
            async with ftransfer.AsyncClient(_url(server, "tftp")) as client:
                with pytest.raises(ftransfer.NotSupported):
                    await client.list()
            return names, size

    names, size = asyncio.run(asyncio.wait_for(main(), SAFETY_S))
    assert names == ["f.txt"] and size == 5


def test_a_refusal_arrives_as_its_error_over_udp(served: Path) -> None:
    async def main() -> None:
        async with (
            ftransfer.Server(_config(served)) as server,
            ftransfer.AsyncClient(_url(server, "udp")) as client,
        ):
            await client.get("missing.bin", os.devnull)

    with pytest.raises(ftransfer.FtransferError) as caught:
        asyncio.run(asyncio.wait_for(main(), SAFETY_S))
    assert caught.value.code == 10 and "missing.bin" in str(caught.value)


class _CancelOnFirstBytes(Progress):
    """Cancels the uploading task as soon as the first bytes go out (after ACCEPT:
    the client knows its session and can close it)."""

    def __init__(self) -> None:
        self.task: asyncio.Task[object] | None = None

    def advance(self, nbytes: int) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _Seen(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event = text, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_a_cancelled_udp_upload_tells_the_server_which_drops_it(
    tmp_path: Path, served: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(20_000_000))
    progress = _CancelOnFirstBytes()

    async def main() -> bool:
        seen = _Seen("interrupted by the client")
        logging.getLogger("ftransfer.server").addHandler(seen)
        try:
            # give_up 600 s: only the client's CLOSE can free the session in time
            config = evolve(_config(served), udp_give_up_s=600.0)
            async with (
                ftransfer.Server(config) as server,
                ftransfer.AsyncClient(_url(server, "udp")) as client,
            ):
                progress.task = asyncio.ensure_future(
                    client.put(str(source), "new.bin", progress=progress)
                )
                with pytest.raises(asyncio.CancelledError):
                    await progress.task
                await seen.event.wait()
                return temporaries(served) == []
        finally:
            logging.getLogger("ftransfer.server").removeHandler(seen)

    assert asyncio.run(asyncio.wait_for(main(), SAFETY_S)) is True
    assert not (served / "new.bin").exists()


class _FailingProgress(Progress):
    """Raises from inside the call's handlers once bytes arrive, as a user's
    progress callback may: the error must reach the caller, not asyncio's log."""

    def advance(self, nbytes: int) -> None:
        raise RuntimeError("the progress display broke")


class _AsyncioErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("scheme", ["udp", "tftp"])
def test_a_download_to_a_closed_pipe_raises_output_closed(served: Path, scheme: str) -> None:
    """The sink's OutputClosed (EPIPE), raised inside the driver's callback, ends
    the call with that error, as the blocking Client does, not a transfer run to
    its end and reported as an IntegrityError."""
    from ftransfer.client.local import OutputClosed

    (served / "f.bin").write_bytes(BODY)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away (| head): every write is EPIPE
    errors = _AsyncioErrors()

    async def main() -> None:
        async with (
            ftransfer.Server(_config(served)) as server,
            ftransfer.AsyncClient(_url(server, scheme)) as client,
        ):
            await client.get("f.bin", write_end)

    logging.getLogger("asyncio").addHandler(errors)
    try:
        with pytest.raises(OutputClosed):
            asyncio.run(asyncio.wait_for(main(), SAFETY_S))
    finally:
        logging.getLogger("asyncio").removeHandler(errors)
        os.close(write_end)
    assert errors.messages == []


@pytest.mark.parametrize("scheme", ["udp", "tftp"])
def test_an_error_in_a_handler_reaches_the_caller(
    tmp_path: Path, served: Path, scheme: str
) -> None:
    (served / "f.bin").write_bytes(BODY)
    errors = _AsyncioErrors()

    async def main() -> None:
        async with (
            ftransfer.Server(_config(served)) as server,
            ftransfer.AsyncClient(_url(server, scheme)) as client,
        ):
            await client.get("f.bin", str(tmp_path / "copy.bin"), progress=_FailingProgress())

    logging.getLogger("asyncio").addHandler(errors)
    try:
        with pytest.raises(RuntimeError, match="progress display broke"):
            asyncio.run(asyncio.wait_for(main(), SAFETY_S))
    finally:
        logging.getLogger("asyncio").removeHandler(errors)
    assert errors.messages == []
    assert not (tmp_path / "copy.bin").exists()
