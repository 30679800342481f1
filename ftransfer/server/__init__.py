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

``start`` first removes the temporary files that dead writers left in the root
(storage/atomic.py decides which are dead); ``close`` stops listening, ends every
session (uploads in progress are aborted and their temporaries removed) and
releases the store.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import Any

from ..config import ServerConfig
from ..errors import Busy, ConnectionFailed
from ..io.buffers import BufferPool
from ..io.stream import FrameStream
from ..proto.tcp.connection import Connection, Role
from ..storage.base import Store
from ..storage.local import LocalStore
from .operations import Operations, Policy, Requester, format_peer

logger = logging.getLogger("ftransfer.server")

LISTEN_BACKLOG = 512
"""Pending connections the kernel queues for accept (bursts of many clients)."""


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


def format_url(scheme: str, address: tuple[Any, ...]) -> str:
    """``tcp://HOST:PORT`` with IPv6 hosts in brackets."""
    return f"{scheme}://{format_peer(str(address[0]), int(address[1]))}"


class Server:
    """A running ftransfer server over one root (a directory by default)."""

    def __init__(self, config: ServerConfig, store: Store | None = None) -> None:
        self.config = config
        self.store: Store = (
            store if store is not None else LocalStore(config.root, fsync=config.fsync)
        )
        policy = Policy(read_only=config.read_only, max_file_bytes=config.max_file_bytes)
        self.operations = Operations(self.store, policy)
        self.buffers = BufferPool()
        self._listeners: list[asyncio.Server] = []
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

    async def start(self) -> None:
        """Remove stale temporary files, bind and start accepting."""
        swept = self.store.sweep_temporaries()
        if swept:
            logger.info("removed %d temporary files left by writers that are gone", swept)
        sock = bind_tcp(self.config.host, self.config.port)
        self.address = sock.getsockname()
        loop = asyncio.get_running_loop()
        self._listeners.append(await loop.create_server(self._new_stream, sock=sock))
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

    def _new_stream(self) -> FrameStream:
        stream = FrameStream(Connection(Role.SERVER), self.buffers, self.config.idle_timeout_s)
        task = asyncio.get_running_loop().create_task(self._run(stream))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)
        return stream

    async def _run(self, stream: FrameStream) -> None:
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
            who = Requester(peer=format_peer(*stream.peer), transport="tcp")
            await TcpSession(self.operations, self.config, stream, who).run()
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
        for listener in self._listeners:
            listener.close()
        if self.udp is not None:
            self.udp.close()
        if self.tftp is not None:
            self.tftp.close()
            await asyncio.to_thread(self.tftp.join)  # transfer threads abort and end
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self.buffers.clear()
        self.store.close()
