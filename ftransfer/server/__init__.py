"""The ftransfer server: listeners, connection caps, lifecycle.

Theory of operation
-------------------
``Server`` owns one ``Store`` (the served root) and one ``Operations`` (the policy
every transport goes through), and starts up to three services over them: TCP
(``tcp.TcpSession`` per connection), UDP (``udp.UdpService`` on one socket) and
TFTP (``tftp.TftpService``, a thread per transfer). It enforces the TCP
connection caps, global and per address: over either, a connection gets ERROR 41
"busy" at once and is closed. After ``start`` the bound ports are attributes
(``tcp_port``, ``udp_port``, ``tftp_port``), so an embedding program or a test can
serve on port 0.

TCP is TLS 1.3 unless the config says ``tls=False`` (``--insecure``). The
server accepts each connection itself and peeks at its first byte before anything
else: a TLS ClientHello (0x16) goes to the TLS handshake, and a plaintext
ftransfer HELLO gets ERROR 3 "TLS required" in plaintext, so that a client run
with ``--insecure`` is told what is wrong instead of reading TLS records as
frames. Only then does a ``FrameStream`` take the connection, through
``connect_accepted_socket``. On a plaintext server a TLS client is answered with
ERROR 1 (its ClientHello is no HELLO), which its TLS layer reports as "not TLS".

With a users file every client must log in (the TCP session's LOGIN, checked by
``Operations.login``); ``reload_users`` re-reads it (``ftransfer serve`` calls it
on SIGHUP), and connections already logged in keep their principal.

``start`` first removes the temporary files that dead writers left in the root
(storage/atomic.py decides which are dead); ``close`` stops listening, ends every
session (uploads in progress are aborted and their temporaries removed) and
releases the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from typing import Any

from ..config import ServerConfig
from ..errors import Busy, ConnectionFailed, TlsRequired, UsageError
from ..io.buffers import BufferPool
from ..io.heap import Trimmer
from ..io.stream import FrameStream
from ..proto.tcp.connection import Connection, Role
from ..storage.base import Store
from ..storage.local import LocalStore
from .operations import Operations, Policy, Requester, format_peer

logger = logging.getLogger("ftransfer.server")

LISTEN_BACKLOG = 512
"""Pending connections the kernel queues for accept (bursts of many clients)."""
TLS_RECORD_HANDSHAKE = 0x16
"""The first byte of every TLS ClientHello (a record of type handshake)."""
ACCEPT_RETRY_S = 0.1
"""After accept fails for want of descriptors (EMFILE), wait this long before the
next try rather than spin while sessions end."""

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl

    from .users import Authenticator


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket; ``::`` is dual-stack (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConnectionFailed(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConnectionFailed(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _refuse_plaintext(sock: socket.socket) -> None:
    """ERROR 3 in plaintext, for a client that did not start TLS (best effort: the
    frame is small and the socket's buffer empty, so one send takes it)."""
    from ..proto.tcp.events import Failed
    from ..proto.tcp.frames import encode

    error = TlsRequired("this server requires TLS: connect without --insecure (TLS is the default)")
    with contextlib.suppress(OSError):
        sock.recv(65536)  # what the client sent: unread, the close would reset
        sock.send(encode(Failed(code=error.code, message=str(error))))


def format_url(scheme: str, address: tuple[Any, ...]) -> str:
    """``tcp://HOST:PORT`` with IPv6 hosts in brackets."""
    return f"{scheme}://{format_peer(str(address[0]), int(address[1]))}"


def open_store(config: ServerConfig) -> Store:
    """The store ``config`` names: an object store (``store``), checked once, or
    the directory ``root``."""
    if config.store is None:
        return LocalStore(config.root, fsync=config.fsync, partial_ttl_s=config.partial_ttl_s)
    from ..storage.s3 import S3Store
    from ..storage.s3_client import parse_store_url

    location = parse_store_url(config.store, config.s3_endpoint, config.s3_region)
    s3 = S3Store(location, partial_ttl_s=config.partial_ttl_s)
    try:
        s3.check()
    except BaseException:
        s3.close()
        raise
    return s3


class Server:
    """A running ftransfer server over one root (a directory by default)."""

    def __init__(self, config: ServerConfig, store: Store | None = None) -> None:
        self.config = config
        self.store: Store = store if store is not None else open_store(config)
        policy = Policy(
            read_only=config.read_only,
            max_file_bytes=config.max_file_bytes,
            anonymous_write=config.anonymous_write,
            max_rate=config.max_rate,
            max_total_rate=config.max_total_rate,
        )
        self.operations = Operations(self.store, policy, users=self._load_users())
        self.tls: ssl.SSLContext | None = None
        self.fingerprint = ""
        """The certificate's ``SHA256:...`` (after ``start``; "" without TLS)."""
        self.identity_created = False
        """``start`` made a new key and certificate (the first start)."""
        self.buffers = BufferPool()
        self.trimmer = Trimmer()
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._per_address: collections.Counter[str] = collections.Counter()
        self.address: tuple[Any, ...] = ()
        self.udp: Any = None
        self.tftp: Any = None

    @property
    def tcp_port(self) -> int:
        """The bound TCP port (after ``start``)."""
        return int(self.address[1])

    @property
    def udp_port(self) -> int | None:
        """The bound UDP port, or None when UDP is off."""
        return None if self.udp is None else int(self.udp.address[1])

    @property
    def tftp_port(self) -> int | None:
        """The bound TFTP port, or None when TFTP is off."""
        return None if self.tftp is None else int(self.tftp.address[1])

    @property
    def urls(self) -> list[str]:
        urls = [format_url("tcp", self.address)]
        if self.udp is not None:
            urls.append(format_url("udp", self.udp.address))
        if self.tftp is not None:
            urls.append(format_url("tftp", self.tftp.address))
        return urls

    def _load_users(self) -> Authenticator | None:
        if self.config.users_file is None:
            return None
        from .users import Authenticator, Lockout, load_users

        return Authenticator(load_users(self.config.users_file), lockout=Lockout())

    def reload_users(self) -> int:
        """Re-read the users file (SIGHUP); returns how many users it has. A file
        that does not load leaves the users as they were (the error is raised)."""
        from .users import load_users

        users = self.operations.users
        if self.config.users_file is None or users is None:
            return 0
        table = load_users(self.config.users_file)
        users.replace_users(table)
        return len(table)

    def _setup_tls(self) -> None:
        from ..io import tls

        config = self.config
        if config.cert_file or config.key_file:
            if not (config.cert_file and config.key_file):
                raise UsageError("--cert and --key go together")
            cert, key = config.cert_file, config.key_file
        else:
            state = config.state_dir or tls.state_dir_default()
            cert, key, self.identity_created = tls.ensure_identity(state)
        self.tls = tls.server_context(cert, key)
        tls.limit_asyncio_tls_buffer()
        self.fingerprint = tls.fingerprint_of_file(cert)

    async def start(self) -> None:
        """Remove stale temporary files, bind and start accepting."""
        if self.config.tls:
            self._setup_tls()
        swept = self.store.sweep_temporaries()
        if swept:
            logger.info("removed %d temporary files left by writers that are gone", swept)
        sock = bind_tcp(self.config.host, self.config.port)
        self.address = sock.getsockname()
        loop = asyncio.get_running_loop()
        self._listener = sock
        self._acceptor = loop.create_task(self._accept(sock))
        if self.config.udp:
            from .udp import UdpService, open_service_socket

            port = self.config.udp_port
            udp_sock = open_service_socket(
                self.config.host, self.tcp_port if port is None else port
            )
            self.udp = UdpService(self.operations, self.config, udp_sock)
        if self.config.tftp_port is not None:
            from .tftp import TftpService
            from .udp import open_service_socket

            tftp_sock = open_service_socket(self.config.host, self.config.tftp_port)
            self.tftp = TftpService(self.operations, self.config, tftp_sock)

    async def _accept(self, listener: socket.socket) -> None:
        """Accept connections until closed; each is admitted in a task of its own."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _address = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors: sessions will end and free some
                logger.warning("accept failed: %s", exc.strerror or exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            task = loop.create_task(self._run(sock))
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)

    async def _first_byte(self, sock: socket.socket) -> int | None:
        """The connection's first byte, peeked (left to be read); None if the peer
        closed first or sent nothing before the HELLO deadline."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(sock.fileno(), ready)
        try:
            async with asyncio.timeout(self.config.hello_timeout_s):
                await readable
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(sock.fileno())
        try:
            head = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return None
        return head[0] if head else None

    async def _open_stream(self, sock: socket.socket) -> FrameStream | None:
        """The connection as a FrameStream, through TLS when the server has it;
        None if it ends before (a refused plaintext client, a failed handshake)."""
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        if self.tls is not None:
            first = await self._first_byte(sock)
            if first != TLS_RECORD_HANDSHAKE:
                if first is not None:
                    _refuse_plaintext(sock)
                sock.close()
                self.trimmer.connection_ended()
                return None
        stream = FrameStream(
            Connection(Role.SERVER),
            self.buffers,
            self.config.idle_timeout_s,
            on_lost=self.trimmer.connection_ended,  # freed heap back to the system: io/heap.py
        )
        try:
            await loop.connect_accepted_socket(
                lambda: stream,
                sock,
                ssl=self.tls,
                ssl_handshake_timeout=self.config.hello_timeout_s if self.tls else None,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            logger.info("TLS handshake failed: %s", exc)
            sock.close()
            self.trimmer.connection_ended()
            return None
        return stream

    async def _run(self, sock: socket.socket) -> None:
        self.trimmer.connection_started()
        stream = await self._open_stream(sock)
        if stream is not None:
            await self._serve(stream)

    async def _serve(self, stream: FrameStream) -> None:
        from .tcp import TcpSession

        await stream.wait_connected()
        host = stream.peer[0]
        if (
            len(self._sessions) > self.config.max_connections
            or self._per_address[host] >= self.config.max_connections_per_address
        ):
            logger.warning("refused %s: too many connections", host)
            stream.close_with_error(Busy("too many connections, try later"))
            return
        self._per_address[host] += 1
        try:
            who = Requester(
                peer=format_peer(*stream.peer), transport="tcp", principal=self.operations.anonymous
            )
            issue = self.udp.issue_ticket if self.udp and self.udp.sealed else None
            await TcpSession(self.operations, self.config, stream, who, issue).run()
        finally:
            self._per_address[host] -= 1
            if not self._per_address[host]:
                del self._per_address[host]

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, cancel sessions (aborting uploads), release the root."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        if self.udp is not None:
            self.udp.close()
        if self.tftp is not None:
            self.tftp.close()
            await asyncio.to_thread(self.tftp.join)  # transfer threads abort and end
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        self.buffers.clear()
        self.operations.close()
        self.store.close()
