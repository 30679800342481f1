"""The client's TCP sockets: the same five primitives, blocking or on asyncio.

Theory of operation
-------------------
The client's half of the TCP protocol is sans-IO logic (client/tcp.py) that owns
its ``Connection`` and asks for bytes to be moved with five primitives; the two
classes here carry them out, one for the synchronous ``Client`` (a blocking socket:
nothing of asyncio is imported, which keeps a command's start-up short) and one
for ``AsyncClient`` (a non-blocking socket on the running loop)::

    write(data)                 queue bytes (corked: sent by the next flush or read)
    flush()                     send what is queued
    sendfile(fd, offset, count) send a file range without copying (os.sendfile);
                                returns how many bytes the file had, and sends
                                zeros for the rest (the frame stays whole)
    read(large, timeout)        one read into a reused buffer (a 1 MiB one while a
                                file streams in), as a view valid until the next
                                read; b"" at the end of the stream; ``timeout``
                                bounds this read only (the answer to HELLO)
    poll(large)                 the same without waiting: None if nothing is there

and, outside the logic, ``peer_closed()``: whether an idle connection was closed by
the server (or has its last ERROR waiting), so that the client opens a new one.

A read that waits longer than the idle timeout raises ``TransferTimeout``; OS errors
become ``ConnectionFailed`` here, once.

TLS (the default): ``start_tls_blocking`` wraps the connected socket in the
standard library's ``SSLSocket`` (its reads and writes are C calls, as fast as
Python gets TLS); ``AsyncSocket.start_tls`` runs an ``SSLObject`` over two memory
BIOs on the raw non-blocking socket, because asyncio's ``sock_*`` calls do not
take an SSLSocket. Both hand back the server's certificate (DER) for the caller
to check (client/known_hosts.py). Over TLS ``sendfile`` reads the range and
writes it through TLS (no zero copy without kTLS), and ``peer_closed`` asks
whether the socket is readable at all: the server sends no session tickets, so
an idle TLS connection has nothing to read until it closes.

The blocking side uses ``_socket``, the C module under ``socket``, directly:
``socket.py`` turns hundreds of constants into enums when imported, 4-6 ms of a
command's start-up here (with ``selectors``), for nothing this client needs. What
it would add (connecting to the first address that answers, sendfile) is written
below in a few lines; the asyncio side imports ``socket`` anyway.
"""

from __future__ import annotations

import _socket
import os
import select
import time

from ..errors import ConnectionFailed, FtransferError, HostKeyError, InsecureServer, TransferTimeout
from .buffers import LARGE_BUFFER_BYTES, SMALL_BUFFER_BYTES, MappedBuffer

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import socket
    import ssl
    from collections.abc import Coroutine

TLS_READ_BYTES = 1 << 20
"""A file range sent over TLS is read and written in pieces of this size."""


TLS_RECORD_BYTES = 16 * 1024
"""Largest TLS plaintext record (RFC 8446, 5.1)."""


class ReadTimedOut(TransferTimeout):
    """A read with its own ``timeout`` got nothing in time."""


def connect_blocking(host: str, port: int, *, timeout_s: float) -> tuple[_socket.socket, float]:
    """A connected TCP socket and how long the connect took (about one round trip):
    each address the name resolves to is tried in turn, as socket.create_connection
    does."""
    started = time.monotonic()
    # An ASCII name as bytes: no import of the idna codec (2 ms) to encode it.
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    try:
        infos = _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM)
    except OSError as exc:
        raise _connect_error(host, port, exc) from None
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _canonical, address in infos:
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(timeout_s)
        try:
            sock.connect(address)
        except TimeoutError:
            sock.close()
            raise TransferTimeout(f"connecting to {_address(host, port)} timed out") from None
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock, time.monotonic() - started
    raise _connect_error(host, port, error)


def _connect_error(host: str, port: int, exc: OSError) -> FtransferError:
    if isinstance(exc, _socket.gaierror):
        return ConnectionFailed(f"cannot resolve {host!r}: {exc.strerror}")
    reason = exc.strerror or str(exc)
    return ConnectionFailed(f"cannot connect to {_address(host, port)}: {reason}")


def _address(host: str, port: int) -> str:
    """``host:port``, IPv6 in brackets (``[::1]:9021``), as the user writes it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _lost(exc: OSError) -> ConnectionFailed:
    return ConnectionFailed(f"connection lost: {exc.strerror or exc}")


def _peer_closed(sock: _socket.socket) -> bool:
    """Whether an idle connection is past reuse, checked without waiting or taking
    a byte (a peek, as urllib3 checks a pooled connection): the end of the stream,
    a reset, or bytes nobody asked for (the server's last ERROR before its close)."""
    try:
        sock.recv(1, _socket.MSG_PEEK)
    except BlockingIOError:
        return False  # nothing there: still open
    except OSError:
        return True
    return True


def tls_error(host: str, port: int, exc: OSError) -> FtransferError:
    """What a failed TLS handshake means, in the user's words."""
    import ssl

    where = _address(host, port)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HostKeyError(f"{where}: the certificate does not verify: {exc.verify_message}")
    reason = getattr(exc, "reason", None) or ""
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return InsecureServer(
            f"{where} does not speak TLS (a server run with --insecure?): give --insecure "
            f"to talk to it in plaintext, on a trusted link only"
        )
    if (
        isinstance(exc, ssl.SSLEOFError | ConnectionError)
        or reason == "UNEXPECTED_EOF_WHILE_READING"
    ):
        return ConnectionFailed(f"{where} closed the connection during the TLS handshake")
    return ConnectionFailed(f"TLS handshake with {where} failed: {reason or exc}")


def start_tls_blocking(
    raw: _socket.socket,
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    server_hostname: str | None,
    timeout_s: float,
) -> tuple[ssl.SSLSocket, bytes]:
    """TLS over a connected socket (the handshake within ``timeout_s``): the TLS
    socket and the server's certificate."""
    import socket

    plain = socket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    plain.settimeout(timeout_s)
    try:
        tls = context.wrap_socket(plain, server_hostname=server_hostname)
    except TimeoutError:
        plain.close()
        raise TransferTimeout(f"TLS handshake with {_address(host, port)} timed out") from None
    except OSError as exc:
        plain.close()
        raise tls_error(host, port, exc) from None
    return tls, tls.getpeercert(binary_form=True) or b""


def _wants_read(exc: OSError) -> bool:
    """A non-blocking TLS read that needs more bytes first."""
    import ssl

    return isinstance(exc, ssl.SSLWantReadError)


def _tls_pending(sock: _socket.socket | ssl.SSLSocket) -> bool:
    """Plaintext the TLS layer holds already (read from the socket, not taken)."""
    pending = getattr(sock, "pending", None)
    return bool(pending()) if pending is not None else False


def _readable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Buffers:
    """A small receive buffer, and a large one while a file streams in."""

    def __init__(self) -> None:
        self._small = memoryview(bytearray(SMALL_BUFFER_BYTES))
        self._large: MappedBuffer | None = None

    def get(self, large: bool) -> memoryview:
        if not large:
            return self._small
        if self._large is None:
            self._large = MappedBuffer(LARGE_BUFFER_BYTES)
        return self._large.view

    def release(self) -> None:
        if self._large is not None:
            self._large.release()
            self._large = None


class BlockingSocket:
    """The primitives on a blocking socket (the synchronous client)."""

    def __init__(
        self, sock: _socket.socket | ssl.SSLSocket, idle_timeout_s: float, *, tls: bool = False
    ) -> None:
        self.sock, self.idle_timeout_s, self.tls = sock, idle_timeout_s, tls
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.settimeout(idle_timeout_s)
        self._cork: list[bytes] = []
        self._buffers = _Buffers()

    def write(self, data: bytes) -> None:
        self._cork.append(data)

    def flush(self) -> None:
        if not self._cork:
            return
        data = b"".join(self._cork) if len(self._cork) > 1 else self._cork[0]
        self._cork.clear()
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise self._stalled() from None
        except OSError as exc:
            raise _lost(exc) from None

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        self.flush()
        if self.tls:
            return self._send_range(fd, offset, count)
        sent = 0
        out = self.sock.fileno()
        try:
            while sent < count:
                try:
                    n = os.sendfile(out, fd, offset + sent, count - sent)
                except BlockingIOError:  # a socket with a timeout is non-blocking
                    self._wait_writable()
                    continue
                if n == 0:
                    break  # the file is shorter than it was
                sent += n
            if sent < count:  # keep the frame whole: zeros for what the file lost
                self.sock.sendall(bytes(count - sent))
        except TimeoutError:
            raise self._stalled() from None
        except OSError as exc:
            raise _lost(exc) from None
        return sent

    def _send_range(self, fd: int, offset: int, count: int) -> int:
        """``sendfile`` over TLS: read and write (zeros for what the file lost)."""
        sent = 0
        try:
            while sent < count:
                data = os.pread(fd, min(TLS_READ_BYTES, count - sent), offset + sent)
                if not data:
                    break
                self.sock.sendall(data)
                sent += len(data)
            if sent < count:
                self.sock.sendall(bytes(count - sent))
        except TimeoutError:
            raise self._stalled() from None
        except OSError as exc:
            raise _lost(exc) from None
        return sent

    def _wait_writable(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLOUT)
        if not poller.poll(self.idle_timeout_s * 1000):
            raise self._stalled()

    def read(self, large: bool, timeout: float | None = None) -> memoryview:
        self.flush()
        view = self._buffers.get(large)
        try:
            if timeout is not None:
                self.sock.settimeout(timeout)
            n = self.sock.recv_into(view)
            if self.tls and n:
                n += self._more_records(view[n:])
        except TimeoutError:
            if timeout is not None:
                raise ReadTimedOut(f"nothing within {timeout:g} s") from None
            raise self._stalled() from None
        except OSError as exc:
            raise _lost(exc) from None
        finally:
            if timeout is not None:
                self.sock.settimeout(self.idle_timeout_s)
        return view[:n]

    def _more_records(self, view: memoryview) -> int:
        """Over TLS a read returns one record (16 KiB): take the records already
        here as well, so a large read costs one decoding step, not one per record."""
        got = 0
        self.sock.setblocking(False)
        try:
            while len(view) - got >= TLS_RECORD_BYTES:
                n = self.sock.recv_into(view[got:])
                if not n:
                    break  # the end of the stream: the next read sees it
                got += n
        except OSError:
            pass  # nothing more yet (SSLWantReadError), or an error the next read meets
        finally:
            self.sock.settimeout(self.idle_timeout_s)
        return got

    def poll(self, large: bool) -> memoryview | None:
        self.flush()
        view = self._buffers.get(large)
        if self.tls and not _tls_pending(self.sock) and not _readable_now(self.sock.fileno()):
            return None  # (a TLS socket raises SSLWantReadError, not BlockingIOError)
        self.sock.setblocking(False)  # a socket with a timeout would wait for it
        try:
            n = self.sock.recv_into(view)
        except BlockingIOError:
            return None
        except OSError as exc:
            if _wants_read(exc):  # part of a TLS record: the rest is on its way
                return None
            raise _lost(exc) from None
        finally:
            self.sock.settimeout(self.idle_timeout_s)
        return view[:n]

    def _stalled(self) -> TransferTimeout:
        seconds = self.idle_timeout_s
        return TransferTimeout(f"no progress for {seconds:g} s: the server stopped answering")

    def peer_closed(self) -> bool:
        """See ``_peer_closed``."""
        if self.tls:
            return _readable_now(self.sock.fileno())
        self.sock.setblocking(False)
        try:
            return _peer_closed(self.sock)
        finally:
            self.sock.settimeout(self.idle_timeout_s)

    def close(self) -> None:
        try:
            self.flush()
        except FtransferError:
            pass
        finally:
            self.sock.close()
            self._buffers.release()


class AsyncSocket:
    """The primitives on a non-blocking socket and the running asyncio loop."""

    def __init__(self, sock: socket.socket, idle_timeout_s: float) -> None:
        import asyncio

        self.sock, self.idle_timeout_s = sock, idle_timeout_s
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self._cork: list[bytes] = []
        self._buffers = _Buffers()
        self._tls: _AsyncTls | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, *, timeout_s: float, idle_timeout_s: float
    ) -> tuple[AsyncSocket, float]:
        import asyncio
        import socket

        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                family, kind, proto, _name, address = infos[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, address)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise TransferTimeout(f"connecting to {_address(host, port)} timed out") from None
        except OSError as exc:
            raise _connect_error(host, port, exc) from None
        return cls(sock, idle_timeout_s), loop.time() - started

    async def start_tls(
        self, context: ssl.SSLContext, *, server_hostname: str | None, timeout_s: float
    ) -> bytes:
        """TLS from here on (the handshake within ``timeout_s``); the server's
        certificate."""
        import asyncio

        host, port = self.sock.getpeername()[:2]
        tls = _AsyncTls(context, server_hostname)
        try:
            async with asyncio.timeout(timeout_s):
                await tls.handshake(self._loop, self.sock)
        except TimeoutError:
            raise TransferTimeout(f"TLS handshake with {_address(host, port)} timed out") from None
        except OSError as exc:
            raise tls_error(host, port, exc) from None
        self._tls = tls
        return tls.certificate()

    def write(self, data: bytes) -> None:
        self._cork.append(data)

    async def _send(self, data: bytes) -> None:
        if self._tls is not None:
            data = self._tls.seal(data)
        await self._loop.sock_sendall(self.sock, data)

    async def _recv_into(self, view: memoryview) -> int:
        if self._tls is None:
            return await self._loop.sock_recv_into(self.sock, view)
        return await self._tls.recv_into(self._loop, self.sock, view)

    async def _timed(self, work: Coroutine[object, object, int], timeout: float) -> int:
        import asyncio

        try:
            async with asyncio.timeout(timeout):
                return await work
        except TimeoutError:
            raise self._stalled() from None
        except OSError as exc:
            raise _lost(exc) from None

    async def flush(self) -> None:
        if not self._cork:
            return
        data = b"".join(self._cork) if len(self._cork) > 1 else self._cork[0]
        self._cork.clear()

        async def send() -> int:
            await self._send(data)
            return len(data)

        await self._timed(send(), self.idle_timeout_s)

    async def sendfile(self, fd: int, offset: int, count: int) -> int:
        await self.flush()

        async def send() -> int:
            if self._tls is not None:
                return await self._send_range(fd, offset, count)
            with open(fd, "rb", buffering=0, closefd=False) as file:
                sent = await self._loop.sock_sendfile(self.sock, file, offset, count, fallback=True)
            if sent < count:
                await self._loop.sock_sendall(self.sock, bytes(count - sent))
            return sent

        return await self._timed(send(), self.idle_timeout_s)

    async def _send_range(self, fd: int, offset: int, count: int) -> int:
        sent = 0
        while sent < count:
            data = os.pread(fd, min(TLS_READ_BYTES, count - sent), offset + sent)
            if not data:
                break
            await self._send(data)
            sent += len(data)
        if sent < count:
            await self._send(bytes(count - sent))
        return sent

    async def read(self, large: bool, timeout: float | None = None) -> memoryview:
        import asyncio

        await self.flush()
        view = self._buffers.get(large)
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.idle_timeout_s):
                n = await self._recv_into(view)
        except TimeoutError:
            if timeout is not None:
                raise ReadTimedOut(f"nothing within {timeout:g} s") from None
            raise self._stalled() from None
        except OSError as exc:
            raise _lost(exc) from None
        return view[:n]

    async def poll(self, large: bool) -> memoryview | None:
        await self.flush()
        view = self._buffers.get(large)
        if self._tls is not None:
            return self._tls.poll(self.sock, view)
        try:
            n = self.sock.recv_into(view)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _lost(exc) from None
        return view[:n]

    def _stalled(self) -> TransferTimeout:
        seconds = self.idle_timeout_s
        return TransferTimeout(f"no progress for {seconds:g} s: the server stopped answering")

    def peer_closed(self) -> bool:
        """See ``_peer_closed`` (the socket is non-blocking already)."""
        if self._tls is not None:
            return _readable_now(self.sock.fileno())
        return _peer_closed(self.sock)

    async def close(self) -> None:
        try:
            await self.flush()
        except FtransferError:
            pass
        finally:
            self.sock.close()
            self._buffers.release()


class _AsyncTls:
    """TLS as an ``SSLObject`` between two memory BIOs: ``seal`` turns bytes into
    records to send, ``recv_into`` and ``poll`` feed received records in and take
    plaintext out. Errors are OSErrors (ssl.SSLError), mapped by the caller."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        import ssl

        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self._want_read: type[Exception] = ssl.SSLWantReadError
        self._zero: type[Exception] = ssl.SSLZeroReturnError

    async def handshake(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        while True:
            try:
                self._obj.do_handshake()
            except self._want_read:
                await self._flush(loop, sock)
                await self._feed(loop, sock)
                continue
            await self._flush(loop, sock)
            return

    def certificate(self) -> bytes:
        return self._obj.getpeercert(binary_form=True) or b""

    async def _flush(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        data = self._outgoing.read()
        if data:
            await loop.sock_sendall(sock, data)

    async def _feed(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        data = await loop.sock_recv(sock, TLS_READ_BYTES)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def seal(self, data: bytes) -> bytes:
        self._obj.write(data)
        return self._outgoing.read()

    def _take(self, view: memoryview) -> int | None:
        """Plaintext already received into ``view``: a count (0 at the end of the
        stream), or None when more records are needed."""
        try:
            n: int = self._obj.read(len(view), view)  # type: ignore[assignment]
            return n
        except self._want_read:
            return None
        except self._zero:
            return 0

    async def recv_into(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, view: memoryview
    ) -> int:
        while (n := self._take(view)) is None:
            await self._feed(loop, sock)
        return n

    def poll(self, sock: socket.socket, view: memoryview) -> memoryview | None:
        while (n := self._take(view)) is None:
            try:
                data = sock.recv(TLS_READ_BYTES)
            except BlockingIOError:
                return None
            except OSError as exc:
                raise _lost(exc) from None
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
        return view[:n]
