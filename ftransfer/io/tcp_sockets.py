"""The client's TCP sockets: the same six primitives, blocking or on asyncio.

Theory of operation
-------------------
The client's half of the TCP protocol is sans-IO logic (client/tcp.py) that owns
its ``Connection`` and asks for bytes to be moved with six primitives; the two
classes here carry them out, one for the synchronous ``Client`` (a blocking socket:
nothing of asyncio is imported, which keeps a command's start-up short) and one
for ``AsyncClient`` (a non-blocking socket on the running loop)::

    write(data)                 queue bytes (corked: sent by the next flush or read)
    flush()                     send what is queued
    sendfile(fd, offset, count) send a file range without copying (os.sendfile);
                                returns how many bytes the file had, and sends
                                zeros for the rest (the frame stays whole)
    copy_range(fd, offset,      the same by reading the range through a reused
               count, hasher)   buffer, each piece hashed, then written (TLS);
                                a failed read raises FileUnreadable after the
                                zeros that complete the frame
    read(large, timeout)        one read into a reused buffer (a 1 MiB one while a
                                file streams in), as a view valid until the next
                                read; b"" at the end of the stream; ``timeout``
                                bounds this read only (the answer to HELLO)
    poll(large)                 the same without waiting: None if nothing is there

and, outside the logic, ``peer_closed()``: whether an idle connection was closed by
the server (or has its last ERROR waiting), so that the client opens a new one.

A read that waits longer than the idle timeout raises ``TransferTimeout``; OS errors
become ``ConnectionFailed`` here, once.

TLS (the default): both sides run an ``SSLObject`` between two memory BIOs on
the raw socket. ``start_tls_blocking`` makes a ``TlsChannel`` (the socket calls
the blocking side makes, over TLS: many records per system call, where an
``SSLSocket`` makes one send, or two recvs, per 16 KiB record);
``AsyncSocket.start_tls`` an ``_AsyncTls``, because asyncio's ``sock_*`` calls do
not take an SSLSocket. Both hand back the server's certificate (DER) for the
caller to check (client/known_hosts.py). Over TLS a file range is read through a
reused buffer, hashed there and written through TLS (``copy_range``: no zero copy
without kTLS, and one read of the file, where sendfile needs a second one for the
digest), and ``peer_closed`` asks whether the socket is readable at all: the
server sends no session tickets, so an idle TLS connection has nothing to read
until it closes.

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
from .files import unreadable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import socket
    import ssl
    from collections.abc import Coroutine

    from ..checksum import Hasher

TLS_READ_BYTES = 1 << 20
"""A file range sent over TLS is read and written in pieces of this size (also by
``copy_range``: the pieces are hashed while they are in the cache)."""
TLS_WRITE_BYTES = 1 << 20
"""``TlsChannel.sendall`` encrypts up to this much, then sends the records at once."""
TLS_CIPHERTEXT_BYTES = LARGE_BUFFER_BYTES + 64 * 1024
"""``TlsChannel`` reads up to this much ciphertext at once: a large buffer's worth
of plaintext and its records' overhead (22 bytes per 16 KiB)."""


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
) -> tuple[TlsChannel, bytes]:
    """TLS over a connected socket (the handshake within ``timeout_s``, per read):
    the TLS channel and the server's certificate."""
    raw.settimeout(timeout_s)
    try:
        tls = TlsChannel(raw, context, server_hostname)
        tls.handshake()
    except TimeoutError:
        raw.close()
        raise TransferTimeout(f"TLS handshake with {_address(host, port)} timed out") from None
    except OSError as exc:
        raw.close()
        raise tls_error(host, port, exc) from None
    return tls, tls.getpeercert()


class TlsChannel:
    """TLS on a connected blocking socket, as an ``SSLObject`` between two memory
    BIOs, with the calls ``BlockingSocket`` makes on a socket (``sendall``,
    ``recv_into``, timeouts, ``pending``).

    Why not an ``SSLSocket``: its socket BIO makes OpenSSL write every 16 KiB record
    with a ``send`` of its own and read every record with two ``recv`` calls (the
    5-byte header, then the body): 64 sends or 128 recvs per MiB, each one also a
    trip through the interpreter on the receiving side (measured: 16,453 writes for
    a 256 MiB put, 34,491 reads for a get). Here the records of up to
    TLS_WRITE_BYTES of plaintext leave in one ``sendall``, one ``recv_into`` takes
    up to TLS_CIPHERTEXT_BYTES of records, and the plaintext of all the records
    received is taken into the caller's buffer in one call (benchmarks/bench_tls.py
    measures both). Errors are what the socket and ``ssl`` raise (OSErrors), for
    the caller to map; an end of stream without TLS's close_notify is an end of
    stream (as an SSLSocket's ``suppress_ragged_eofs``)."""

    def __init__(
        self, sock: _socket.socket, context: ssl.SSLContext, server_hostname: str | None
    ) -> None:
        import ssl

        self.sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self._want_read: type[Exception] = ssl.SSLWantReadError
        self._ended: tuple[type[Exception], ...] = (ssl.SSLZeroReturnError, ssl.SSLEOFError)
        self._raw: MappedBuffer | None = None

    def handshake(self) -> None:
        while True:
            try:
                self._obj.do_handshake()
            except self._want_read:
                self._flush()
                self._feed()
                continue
            self._flush()
            return

    def getpeercert(self) -> bytes:
        """The server's certificate (DER)."""
        return self._obj.getpeercert(binary_form=True) or b""

    def version(self) -> str:
        """The negotiated protocol (``TLSv1.3``)."""
        return self._obj.version() or ""

    def cipher(self) -> str:
        """The negotiated cipher suite (``TLS_AES_256_GCM_SHA384``)."""
        negotiated = self._obj.cipher()
        return negotiated[0] if negotiated else ""

    def _flush(self) -> None:
        if self._outgoing.pending:
            self.sock.sendall(self._outgoing.read())

    def _feed(self) -> None:
        """One read of records from the socket (raises what the read raises)."""
        if self._raw is None:  # mapped: only the pages the reads touch are resident
            self._raw = MappedBuffer(TLS_CIPHERTEXT_BYTES)
        view = self._raw.view
        n = self.sock.recv_into(view)
        if n:
            self._incoming.write(view[:n])
        else:
            self._incoming.write_eof()

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), TLS_WRITE_BYTES):
            self._obj.write(view[start : start + TLS_WRITE_BYTES])
            self._flush()

    def recv_into(self, view: memoryview) -> int:
        """Plaintext into ``view``: what the records received hold, reading the
        socket (once per try) until there is some; 0 at the end of the stream."""
        while (n := self._take(view)) is None:
            self._feed()
        return n

    def _take(self, view: memoryview) -> int | None:
        """The plaintext of the records already received, up to ``len(view)``; None
        if none is complete yet."""
        got, size = 0, len(view)
        try:
            while got < size:
                n: int = self._obj.read(size - got, view[got:])  # type: ignore[assignment]
                if not n:  # close_notify (ssl returns 0, not SSLZeroReturnError)
                    break
                got += n
        except self._want_read:
            return got or None
        except self._ended:
            return got
        return got

    def pending(self) -> int:
        """Bytes received and not taken yet (plaintext of a record being read, and
        records not decrypted)."""
        return self._obj.pending() + self._incoming.pending

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.sock.setsockopt(level, option, value)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        if self._raw is not None:
            self._raw.release()
            self._raw = None


def _wants_read(exc: OSError) -> bool:
    """A non-blocking TLS read that needs more bytes first."""
    import ssl

    return isinstance(exc, ssl.SSLWantReadError)


def _tls_pending(sock: _socket.socket | TlsChannel) -> bool:
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
        self._copy: MappedBuffer | None = None

    def get(self, large: bool) -> memoryview:
        if not large:
            return self._small
        if self._large is None:
            self._large = MappedBuffer(LARGE_BUFFER_BYTES)
        return self._large.view

    def for_copy(self) -> memoryview:
        """The buffer file ranges are read into to be sent (``copy_range``): not the
        receive buffer, whose last view the caller may still hold."""
        if self._copy is None:
            self._copy = MappedBuffer(TLS_READ_BYTES)
        return self._copy.view

    def release(self) -> None:
        for buffer in (self._large, self._copy):
            if buffer is not None:
                buffer.release()
        self._large = self._copy = None


class BlockingSocket:
    """The primitives on a blocking socket (the synchronous client)."""

    def __init__(
        self, sock: _socket.socket | TlsChannel, idle_timeout_s: float, *, tls: bool = False
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
        if self.tls:  # (the kernel cannot encrypt: read and send, as copy_range does)
            return self.copy_range(fd, offset, count, None)
        self.flush()
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

    def copy_range(self, fd: int, offset: int, count: int, hasher: Hasher | None) -> int:
        """A file range read through a reused buffer and written, each piece given to
        ``hasher`` first (files.CopyFrame): what TLS does instead of sendfile. Returns
        how many bytes the file had; the rest of the frame is sent as zeros, and a
        read that failed raises ``unreadable`` after them."""
        self.flush()
        view = self._buffers.for_copy()
        sent, failed = 0, None
        try:
            while sent < count:
                try:
                    n = os.preadv(fd, [view[: min(len(view), count - sent)]], offset + sent)
                except OSError as exc:
                    failed = exc
                    break
                if n == 0:
                    break
                if hasher is not None:
                    hasher.update(view[:n])
                self.sock.sendall(view[:n])
                sent += n
            if sent < count:
                self.sock.sendall(bytes(count - sent))
        except TimeoutError:
            raise self._stalled() from None
        except OSError as exc:
            raise _lost(exc) from None
        if failed is not None:
            raise unreadable(failed)
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
        sock = self.sock
        if isinstance(sock, TlsChannel):
            return sock.pending() > 0 or _readable_now(sock.fileno())
        sock.setblocking(False)
        try:
            return _peer_closed(sock)
        finally:
            sock.settimeout(self.idle_timeout_s)

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

    async def _send(self, data: bytes | memoryview) -> None:
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
        if self._tls is not None:  # (the kernel cannot encrypt: as copy_range does)
            return await self.copy_range(fd, offset, count, None)
        await self.flush()

        async def send() -> int:
            with open(fd, "rb", buffering=0, closefd=False) as file:
                sent = await self._loop.sock_sendfile(self.sock, file, offset, count, fallback=True)
            if sent < count:
                await self._loop.sock_sendall(self.sock, bytes(count - sent))
            return sent

        return await self._timed(send(), self.idle_timeout_s)

    async def copy_range(self, fd: int, offset: int, count: int, hasher: Hasher | None) -> int:
        """See ``BlockingSocket.copy_range``."""
        await self.flush()
        view = self._buffers.for_copy()
        failed: list[OSError] = []

        async def send() -> int:
            sent = 0
            while sent < count:
                try:
                    n = os.preadv(fd, [view[: min(len(view), count - sent)]], offset + sent)
                except OSError as exc:
                    failed.append(exc)
                    break
                if n == 0:
                    break
                if hasher is not None:
                    hasher.update(view[:n])
                await self._send(view[:n])
                sent += n
            if sent < count:
                await self._send(bytes(count - sent))
            return sent

        sent = await self._timed(send(), self.idle_timeout_s)
        if failed:
            raise unreadable(failed[0])
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

    def seal(self, data: bytes | memoryview) -> bytes:
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
