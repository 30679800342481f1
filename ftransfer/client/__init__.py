"""The client API: ``Client`` and ``AsyncClient`` over tcp://, udp:// and tftp://.

Theory of operation
-------------------
One API in two flavours, httpx's convention: ``Client`` blocks, ``AsyncClient``
awaits, and both offer the same calls over any transport::

    with ftransfer.Client("udp://files.example:9021") as c:   # a bare host is tcp://
        c.put("a.bin", "incoming/a.bin")                        # -> TransferResult
        c.get("incoming/a.bin", "copy.bin"); c.list("incoming"); c.stat("incoming/a.bin")
        c.mkdir("x"); c.move("incoming/a.bin", "x/"); c.remove("x/a.bin")
        c.put_many(["photos"], "backup/", recursive=True)       # a whole tree
        c.get_many(["logs/*.gz"], "here/")                      # a pattern, into here/

Each call is written once (calls.py, over the transports' logic in tcp.py, udp.py
and tftp.py); a flavour only carries out the requests a call yields: on blocking
sockets for ``Client`` (nothing of asyncio is imported, so a command starts fast),
on the running loop for ``AsyncClient``. TCP keeps one connection, opened on first
use and reused; after a failure that leaves it out of step (a timeout, an
interruption), an ERROR that ends it, or a close by the server while it was idle
(its idle timeout: seen by a peek before reuse, as urllib3 checks a pooled
connection), the next call opens a new one. UDP and TFTP make each call a request
of its own. An operation a transport cannot do raises ``NotSupported``.

The client trusts the server no more than the server trusts it: downloads go only
where the caller said, no more bytes than announced are accepted, every wait has a
deadline, and a download is committed only if both ends' digests agree.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence

from ..config import ClientConfig
from ..errors import FtransferError, UsageError
from ..storage.entry import Entry, EntryKind
from ..storage.names import escape
from . import trace
from .calls import STDOUT, Call, Calls, PathLike, RunTcp, RunTftp, RunUdp
from .drive import drive, drive_async
from .result import Progress, Stat, TransferResult, TransferStats
from .urls import Url, format_address, parse_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    import ssl
    from typing import TypeVar

    from ..io.tcp_sockets import AsyncSocket, BlockingSocket, TlsChannel
    from ..proto.udp.sealed import Ticket
    from .auto import TransportChoice
    from .tcp import TcpLogic

    T = TypeVar("T")

__all__ = [
    "STDOUT",
    "AsyncClient",
    "Client",
    "ClientConfig",
    "Entry",
    "EntryKind",
    "Progress",
    "Stat",
    "TransferResult",
    "TransferStats",
    "Url",
    "escape",
    "format_address",
    "parse_url",
]


def server_url(url: str | Url) -> Url:
    """The server a client talks to; ``url`` must not name a path."""
    parsed = url if isinstance(url, Url) else parse_url(url)
    if parsed.path:
        raise UsageError(f"{url}: a client URL names a server; paths go in each call")
    return parsed


class _Base:
    def __init__(
        self,
        url: str | Url,
        config: ClientConfig | None,
        password: str | None,
        notice: Callable[[str], None] | None,
    ) -> None:
        self.url = server_url(url)
        self.config = config or ClientConfig()
        self._calls = Calls(self.url, self.config)
        self.control = self._control()
        """Where TCP goes: the server, or for udp:// the TLS connection of its keys."""
        self._login = _login(self.url, password)
        self._notice = notice or _to_stderr
        self.choice: TransportChoice | None = None
        """What ``auto://`` chose and why (after the first call)."""

    def _control(self) -> Url:
        url = self.url
        if url.scheme in ("udp", "auto") and self.config.tcp_port is not None:
            return Url(scheme="tcp", host=url.host, port=self.config.tcp_port, user=url.user)
        return url

    def _choose_transport(self, ticket: Ticket | FtransferError | None) -> None:
        """``auto://``: probe the path once (sealed with ``ticket``; a refused
        ticket means no encrypted UDP there) and become a tcp:// or udp:// client
        (client/auto.py); the choice and its reason go to ``notice``."""
        from .auto import choose, without_udp

        if isinstance(ticket, FtransferError):
            choice = without_udp(f"the server gives no UDP keys ({ticket})")
        else:
            choice = choose(self.url, ticket)
        self.choice = choice
        url = self.url
        self.url = Url(scheme=choice.transport, host=url.host, port=url.port, user=url.user)
        self._calls = Calls(self.url, self.config)
        self.control = self._control()
        self._notice(f"ftransfer: transport {choice.transport}: {choice.reason}")

    def _logic(self) -> TcpLogic:
        from .tcp import TcpLogic

        resumes = None
        if self.config.resume:
            from .resume import Resumes

            user = self._login[0] if self._login is not None else ""
            resumes = Resumes(self.control.address, user, state_dir=self.config.state_dir)
        return TcpLogic(
            self.control.address,
            hello_timeout_s=self.config.connect_timeout_s,
            login=self._login,
            limit_rate=self.config.limit_rate,
            copy_files=not self.config.insecure,  # TLS: no sendfile
            resumes=resumes,
        )

    def _trust(self, certificate: bytes) -> None:
        """Whether the server's certificate is the one this client trusts (ssh's
        rules, client/known_hosts.py); HostKeyError if not. With a CA the
        handshake has checked it already."""
        from ..io.tls import fingerprint, known_hosts_default
        from .known_hosts import verify_server

        config = self.config
        if config.ca_file is not None:
            return
        verify_server(
            config.known_hosts or known_hosts_default(),
            self.control.address,
            fingerprint(certificate),
            strict=config.strict_host_keys,
            pinned=config.fingerprint,
            notice=self._notice,
        )

    def _tls_context(self) -> tuple[ssl.SSLContext, str | None]:
        """The TLS context, and the host name to check (only against a CA)."""
        from ..io.tls import client_context

        ca = self.config.ca_file
        return client_context(ca), (self.control.host if ca else None)

    @property
    def transport(self) -> str:
        """ "tcp", "udp" or "tftp"."""
        return self.url.scheme


class Client(_Base):
    """A blocking client of one server (see the module docstring)."""

    def __init__(
        self,
        url: str | Url,
        *,
        config: ClientConfig | None = None,
        password: str | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        """``password`` for a URL with a user (else $FTRANSFER_PASSWORD); ``notice``
        is told of a server recorded in known_hosts on first use (default: stderr)."""
        super().__init__(url, config, password, notice)
        self._tcp: tuple[BlockingSocket, TcpLogic] | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the TCP connection, if one is open."""
        if self._tcp is not None:
            sock, logic = self._tcp
            self._tcp = None
            for frame in logic.closing_frames():  # the last VERIFIED
                sock.write(frame)
            sock.close()  # (which sends what is written)

    def _run(self, call: Call[T]) -> T:
        """Carry out what ``call`` asks for, on blocking sockets."""
        return drive(call, self._perform)

    def _call(self, make: Callable[[], Call[T]]) -> T:
        if self.url.scheme == "auto":
            self._choose_transport(self._run(self._calls.probe_ticket()))
        return self._run(make())

    def _perform(self, request: RunTcp | RunUdp | RunTftp) -> object:
        if isinstance(request, RunUdp):
            from .udp import run_sync as run_udp

            run_udp(request.call)
            return None
        if isinstance(request, RunTftp):
            from .tftp import run_sync as run_tftp

            run_tftp(request.call)
            return None
        from .tcp import run_sync

        sock, logic = self._connection()
        return run_sync(sock, logic.guarded(request.make(logic)))

    def _connection(self) -> tuple[BlockingSocket, TcpLogic]:
        from ..io.tcp_sockets import BlockingSocket, connect_blocking

        if self._tcp is not None and not _reusable(*self._tcp):
            self.close()
        if self._tcp is None:
            url, config = self.control, self.config
            raw, rtt = connect_blocking(url.host, url.port, timeout_s=config.connect_timeout_s)
            if trace.ON:
                trace.say(f"tcp: connected to {url.address} in {rtt * 1000:.1f} ms")
            if config.insecure:
                self._tcp = (BlockingSocket(raw, config.idle_timeout_s), self._logic())
            else:
                self._tcp = (self._secure(raw), self._logic())
        return self._tcp

    def _secure(self, raw: _socket.socket) -> BlockingSocket:
        from ..io.tcp_sockets import BlockingSocket, start_tls_blocking

        context, hostname = self._tls_context()
        url, config = self.control, self.config
        tls, certificate = start_tls_blocking(
            raw,
            url.host,
            url.port,
            context,
            server_hostname=hostname,
            timeout_s=config.connect_timeout_s,
        )
        try:
            self._trust(certificate)
        except BaseException:
            tls.close()
            raise
        if trace.ON:
            _trace_tls(tls, certificate, config)
        return BlockingSocket(tls, config.idle_timeout_s, tls=True)

    # ---- the calls ----------------------------------------------------------------------

    def stat(self, path: str) -> Stat:
        """Kind, size, mtime, permission bits and (for files) the server's digest."""
        return self._call(lambda: self._calls.stat(path))

    def ping(self, seq: int = 0) -> float:
        """One time-stamped echo over the TCP connection (PING): its round trip in
        milliseconds (the first one opens the connection, whose handshakes it does
        not count)."""
        return self._call(lambda: self._calls.ping(seq))

    def list(self, path: str = "") -> list[Entry]:
        """The entries of a remote directory ("" is the root), sorted by name."""
        return self._call(lambda: self._calls.listing(path))

    def remove(self, path: str) -> None:
        """Remove a file, a symlink or an empty directory."""
        self._call(lambda: self._calls.remove(path))

    def mkdir(self, path: str, *, parents: bool = False) -> None:
        """Create a directory (``parents``: and missing parents; existing is fine)."""
        self._call(lambda: self._calls.mkdir(path, parents=parents))

    def move(self, source: str, target: str, *, no_clobber: bool = False) -> None:
        """Rename on the server, or move into ``target`` if it is a directory
        (``"/"`` or ``""``: the root)."""
        self._call(lambda: self._calls.move(source, target, no_clobber=no_clobber))

    def get(
        self,
        remote: str,
        local: PathLike | int | None = None,
        *,
        no_clobber: bool = False,
        progress: Progress | None = None,
    ) -> TransferResult:
        """Download ``remote`` to ``local``: a path (written atomically; a directory
        keeps the remote name; None: the current directory), ``"-"`` or a descriptor
        (streamed as it arrives)."""
        return self._call(
            lambda: self._calls.get(remote, local, no_clobber=no_clobber, progress=progress)
        )

    def get_many(
        self,
        remotes: Sequence[str],
        local: PathLike | None = None,
        *,
        recursive: bool = False,
        no_clobber: bool = False,
        progress: Progress | None = None,
        skip: str | None = None,
    ) -> builtins.list[TransferResult | FtransferError]:
        """Download files, patterns (``logs/*.gz``) and, ``recursive``, whole
        directories into the local directory ``local`` (created if missing; None:
        the current directory), scp -r's rules: one source that is no pattern is
        copied *as* ``local`` when ``local`` is not a directory. Pipelined over
        TCP; one outcome per file (and per failed directory), in order: a failure
        does not stop the others. Trees keep their empty directories, mtimes and
        permission bits; symlinks are skipped (``progress.skipped``). ``skip``:
        "update" leaves out files here with the same size and mtime, "checksum"
        those with the same digest (``progress.unchanged``)."""
        return self._call(
            lambda: self._calls.get_many(
                remotes,
                local,
                recursive=recursive,
                no_clobber=no_clobber,
                progress=progress,
                skip=skip,
            )
        )

    def put(
        self,
        local: PathLike,
        remote: str = "",
        *,
        no_clobber: bool = False,
        progress: Progress | None = None,
    ) -> TransferResult:
        """Upload one file, to ``remote`` or into it if it is (or must be) a directory."""
        return _single(self.put_many([local], remote, no_clobber=no_clobber, progress=progress))

    def put_many(
        self,
        locals_: Sequence[PathLike],
        remote: str = "",
        *,
        recursive: bool = False,
        no_clobber: bool = False,
        progress: Progress | None = None,
        skip: str | None = None,
    ) -> builtins.list[TransferResult | FtransferError]:
        """Upload files (and, ``recursive``, whole directories) into the directory
        ``remote`` (or one source to that name), pipelined over TCP; one outcome
        per file (and per failed directory), in order: a failure does not stop the
        others. Trees keep their empty directories, mtimes and permission bits;
        symlinks and special files are skipped (``progress.skipped``). ``skip``:
        "update" leaves out files the server has with the same size and mtime,
        "checksum" those with the same digest (``progress.unchanged``)."""
        return self._call(
            lambda: self._calls.put_many(
                locals_,
                remote,
                recursive=recursive,
                no_clobber=no_clobber,
                progress=progress,
                skip=skip,
            )
        )


class AsyncClient(_Base):
    """The same calls as ``Client``, to be awaited (see the module docstring)."""

    def __init__(
        self,
        url: str | Url,
        *,
        config: ClientConfig | None = None,
        password: str | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        import asyncio

        super().__init__(url, config, password, notice)
        self._tcp: tuple[AsyncSocket, TcpLogic] | None = None
        self._lock = asyncio.Lock()  # one request at a time on the connection

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the TCP connection, if one is open."""
        if self._tcp is not None:
            sock, logic = self._tcp
            self._tcp = None
            for frame in logic.closing_frames():  # the last VERIFIED
                sock.write(frame)
            await sock.close()  # (which sends what is written)

    async def _run(self, call: Call[T]) -> T:
        async with self._lock:
            return await drive_async(call, self._perform)

    async def _call(self, make: Callable[[], Call[T]]) -> T:
        if self.url.scheme == "auto":
            import asyncio

            ticket = await self._run(self._calls.probe_ticket())
            async with self._lock:
                if self.url.scheme == "auto":
                    await asyncio.to_thread(self._choose_transport, ticket)
        return await self._run(make())

    async def _perform(self, request: RunTcp | RunUdp | RunTftp) -> object:
        if isinstance(request, RunUdp):
            from .udp import run_async as run_udp

            await run_udp(request.call)
            return None
        if isinstance(request, RunTftp):
            from .tftp import run_async as run_tftp

            await run_tftp(request.call)
            return None
        from .tcp import run_async

        sock, logic = await self._connection()
        return await run_async(sock, logic.guarded(request.make(logic)))

    async def _connection(self) -> tuple[AsyncSocket, TcpLogic]:
        from ..io.tcp_sockets import AsyncSocket

        if self._tcp is not None and not _reusable(*self._tcp):
            await self.aclose()
        if self._tcp is None:
            url, config = self.control, self.config
            sock, _rtt = await AsyncSocket.connect(
                url.host,
                url.port,
                timeout_s=config.connect_timeout_s,
                idle_timeout_s=config.idle_timeout_s,
            )
            if not config.insecure:
                await self._secure(sock)
            self._tcp = (sock, self._logic())
        return self._tcp

    async def _secure(self, sock: AsyncSocket) -> None:
        context, hostname = self._tls_context()
        try:
            certificate = await sock.start_tls(
                context, server_hostname=hostname, timeout_s=self.config.connect_timeout_s
            )
            self._trust(certificate)
        except BaseException:
            await sock.close()
            raise

    # ---- the calls ----------------------------------------------------------------------

    async def stat(self, path: str) -> Stat:
        return await self._call(lambda: self._calls.stat(path))

    async def list(self, path: str = "") -> list[Entry]:
        return await self._call(lambda: self._calls.listing(path))

    async def remove(self, path: str) -> None:
        await self._call(lambda: self._calls.remove(path))

    async def mkdir(self, path: str, *, parents: bool = False) -> None:
        await self._call(lambda: self._calls.mkdir(path, parents=parents))

    async def move(self, source: str, target: str, *, no_clobber: bool = False) -> None:
        await self._call(lambda: self._calls.move(source, target, no_clobber=no_clobber))

    async def get(
        self,
        remote: str,
        local: PathLike | int | None = None,
        *,
        no_clobber: bool = False,
        progress: Progress | None = None,
    ) -> TransferResult:
        return await self._call(
            lambda: self._calls.get(remote, local, no_clobber=no_clobber, progress=progress)
        )

    async def get_many(
        self,
        remotes: Sequence[str],
        local: PathLike | None = None,
        *,
        recursive: bool = False,
        no_clobber: bool = False,
        progress: Progress | None = None,
        skip: str | None = None,
    ) -> builtins.list[TransferResult | FtransferError]:
        return await self._call(
            lambda: self._calls.get_many(
                remotes,
                local,
                recursive=recursive,
                no_clobber=no_clobber,
                progress=progress,
                skip=skip,
            )
        )

    async def put(
        self,
        local: PathLike,
        remote: str = "",
        *,
        no_clobber: bool = False,
        progress: Progress | None = None,
    ) -> TransferResult:
        outcomes = await self.put_many([local], remote, no_clobber=no_clobber, progress=progress)
        return _single(outcomes)

    async def put_many(
        self,
        locals_: Sequence[PathLike],
        remote: str = "",
        *,
        recursive: bool = False,
        no_clobber: bool = False,
        progress: Progress | None = None,
        skip: str | None = None,
    ) -> builtins.list[TransferResult | FtransferError]:
        return await self._call(
            lambda: self._calls.put_many(
                locals_,
                remote,
                recursive=recursive,
                no_clobber=no_clobber,
                progress=progress,
                skip=skip,
            )
        )


def _trace_tls(tls: TlsChannel, certificate: bytes, config: ClientConfig) -> None:
    from ..io.tls import fingerprint

    how = "known_hosts"
    if config.ca_file:
        how = "a CA"
    elif config.fingerprint:
        how = "a pinned fingerprint"
    server = fingerprint(certificate)
    trace.say(f"tls: {tls.version()} {tls.cipher()}, server {server}, trusted by {how}")


def _to_stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr)


def _login(url: Url, password: str | None) -> tuple[str, str] | None:
    """The LOGIN to send: for a URL with a user, with ``password`` or else
    $FTRANSFER_PASSWORD; None for an anonymous client."""
    if not url.user:
        return None
    if password is None:
        import os

        password = os.environ.get("FTRANSFER_PASSWORD")
    if password is None:
        raise UsageError(
            f"{url.user}@{url.host}: no password (give password=, or set FTRANSFER_PASSWORD)"
        )
    return url.user, password


def _reusable(sock: BlockingSocket | AsyncSocket, logic: TcpLogic) -> bool:
    """Whether the next call may use this connection: in step, not ended by the
    server, and not closed since (an idle timeout), which a peek tells."""
    return logic.usable and not (logic.hello_answered and sock.peer_closed())


def _single(outcomes: builtins.list[TransferResult | FtransferError]) -> TransferResult:
    [outcome] = outcomes
    if isinstance(outcome, FtransferError):
        raise outcome
    return outcome
