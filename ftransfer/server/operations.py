"""The server's operations: the one place where a request becomes Store calls.

Theory of operation
-------------------
Every transport (TCP, UDP, TFTP) turns its protocol events into calls on
``Operations`` and its results back into protocol events; nothing else in the
server decides anything. Here, for every transport alike:

- **names**: the peer's text is parsed once (``storage.names``) and refused with a
  reason before any storage is touched;
- **who**: every request carries a ``Principal``: a user who logged in (TCP's
  LOGIN, checked here by ``login``) or the anonymous one. A principal has a root,
  resolved by ``Store.scoped`` (a user's names start there, and nothing above it
  can be named) and permissions (read, write, delete);
- **policy**: refusals come in a fixed order, the same everywhere (protocol.md
  section 7.1): the name, then permission (the server's read-only switch, login
  required, the principal's permissions), then the size limit, then what only
  the store can tell (not found, not a directory, a symlink, exists, no space);
- **uploads** (``Upload``): written and hashed as bytes arrive, committed only if
  the size and the sender's digest match, and always ended exactly once
  (committed, failed or aborted), so no temporary outlives its request;
- **downloads** (``Download``): the size, mtime and permission bits as opened, the
  digest when the store knows it (then the sender need not hash), and the
  zero-copy descriptor when the store has one;
- **the log**: one record per request (``logs.RequestRecord``), written when it
  ends, with who asked, over what, what, and the outcome: bytes, seconds, digest,
  result and error code. Its text is one line, ``127.0.0.1:5000 tcp put a/b:
  1048576 bytes in 0.120 s (8.7 MB/s), digest ...``, ``... get a/b: refused:
  a/b: no such file``; the same record goes out as JSON or syslog (logs.py).
  Names in it are escaped; LOGINs are records too (the name tried, never the
  password), and so are TICKETs (never their secret; at debug level when issued,
  since each sealed UDP request has one and is logged itself).

The seam for permissions and quotas is ``_allow``: every request passes through
it with the requester and the action ("read", "write", "delete"), before the
store is asked anything.

Calls here are blocking (a store may hash a file or list a large directory); the
asyncio services run the slow ones (``stat``, ``listing``, a large commit) in a
worker thread, the TFTP service calls them from its transfer threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator

from .._records import Record
from ..checksum import CHUNK_BYTES, hex_digest, prefix_digest
from ..errors import (
    AuthenticationFailed,
    FtransferError,
    InternalError,
    LoginRequired,
    NotPermitted,
    ReadOnly,
    TooLarge,
)
from ..proto.ratelimit import Limits, TokenBucket, bucket, limits
from ..storage.base import Entry, EntryKind, Probe, Readable, Resume, Store, Writer, zero_copy_fd
from ..storage.names import ROOT, Name, escape, parse_name
from .logs import RequestRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    from .users import Authenticator, Verdict

    T = TypeVar("T")

logger = logging.getLogger("ftransfer.server")

GIB = 1 << 30
LOGINS_AT_ONCE = 2
"""Password checks running at once (each scrypt takes 16 MiB and ~50 ms of a core):
a flood of LOGINs cannot take the server's memory or every worker thread."""


class Policy(Record):
    """What the operator allows (ServerConfig's policy fields)."""

    read_only: bool = False
    max_file_bytes: int = 1024 * GIB
    anonymous_write: bool = False
    """Without users, anonymous clients may change files (a trusted LAN's opt-in)."""
    max_rate: int | None = None
    """Bytes per second each connection (TCP) or session (UDP) may move each way."""
    max_total_rate: int | None = None
    """Bytes per second the whole server may move each way, over every transport."""


class Principal(Record):
    """Whose request it is: a user, or anonymous (``user`` ""), with a root and
    permissions. ``served`` False: nothing at all (a server with users, before a
    login)."""

    user: str = ""
    root: Name = ROOT
    read: bool = True
    write: bool = False
    delete: bool = False
    served: bool = True


NOBODY = Principal(read=False, served=False)


class Requester(Record):
    """Who asks: the peer's printable address, the transport it came over and the
    principal it speaks for."""

    peer: str
    transport: str
    principal: Principal = Principal()


def format_peer(host: str, port: int) -> str:
    """``host:port``, IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Request:
    """One request's record (``logs.RequestRecord``), logged once when it ends."""

    def __init__(
        self,
        log: logging.Logger,
        who: Requester,
        operation: str,
        path: str | None,
        target: str | None = None,
        *,
        user: str | None = None,
    ) -> None:
        """``path`` and ``target`` as the peer sent them; ``user``: the name a
        LOGIN tried (else the principal's)."""
        self._log, self._who, self._operation = log, who, operation
        self._path = None if path is None else escape(path) or "/"
        self._target = None if target is None else escape(target) or "/"
        self._user = escape(who.principal.user if user is None else user)
        self.started = time.monotonic()
        self.ended = False

    def end(
        self,
        result: str = "ok",
        *,
        level: int = logging.INFO,
        error: FtransferError | None = None,
        reason: str = "",
        size: int | None = None,
        entries: int | None = None,
        digest: bytes | None = None,
    ) -> None:
        """Log the record, the first time only: ``result`` with the ``error`` or
        ``reason`` why, or the ``size`` (bytes) and ``digest`` of a transfer."""
        if self.ended:
            return
        self.ended = True
        self._log.log(level, self._record(result, error, reason, size, entries, digest))

    def _record(
        self,
        result: str,
        error: FtransferError | None,
        reason: str,
        size: int | None,
        entries: int | None,
        digest: bytes | None,
    ) -> RequestRecord:
        who = self._who
        return RequestRecord(
            time=time.time(),
            peer=who.peer,
            user=self._user,
            transport=who.transport,
            operation=self._operation,
            path=self._path,
            target=self._target,
            bytes=size,
            entries=entries,
            seconds=self.seconds(),
            digest=None if digest is None else hex_digest(digest),
            result=result,
            code=None if error is None else error.code or InternalError.code,
            reason=escape(str(error) if error is not None else reason),
        )

    def refused(self, exc: FtransferError, *, level: int = logging.INFO) -> None:
        self.end("refused", error=exc, level=level)

    def seconds(self) -> float:
        return time.monotonic() - self.started


class Resumable(Record):
    """What a client says about a resumable upload (PUT_AT, or a UDP INITIAL's
    resume extension)."""

    transfer_id: bytes
    first_digest: bytes
    offset: int = 0


class Upload:
    """An accepted upload: ``write`` as bytes arrive, then ``commit`` or ``abort``.

    Ends exactly once; a context manager aborts one that did not end (any error,
    a closed connection, cancellation)."""

    def __init__(self, request: _Request, name: Name, writer: Writer, *, start: int = 0) -> None:
        self._request, self.name, self._writer = request, name, writer
        self.start = start
        """Where the bytes of this request start (a resume: the partial had the rest)."""

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort("ended without a commit")

    @property
    def written(self) -> int:
        return self._writer.written

    @property
    def digest(self) -> bytes:
        return self._writer.digest

    @property
    def prefix(self) -> bytes:
        """The prefix digest of the chunks before ``start`` (what a resuming
        client compares with its own)."""
        return prefix_digest(self._writer.chunks[: self.start // CHUNK_BYTES])

    @property
    def ended(self) -> bool:
        return self._request.ended

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes; a failure ends the upload (its error is raised)."""
        try:
            self._writer.write(data)
        except FtransferError as exc:
            self.fail(exc)
            raise

    def commit(self, expected_digest: bytes) -> bytes:
        """Verify, make durable and publish; returns the digest of what was stored."""
        try:
            digest = self._writer.commit(expected_digest)
        except FtransferError as exc:
            self.fail(exc)
            raise
        self._request.end(size=self._writer.written - self.start, digest=digest)
        return digest

    def abort(self, reason: str) -> None:
        """Discard the upload (nothing is committed); the reason goes to the log."""
        self._writer.abort()  # (waits for a commit running in another thread)
        if not self._writer.committed:  # else the commit writes the record
            self._request.end("aborted", reason=reason, size=self._writer.written - self.start)

    def fail(self, exc: FtransferError) -> None:
        """The transfer failed (a timeout, the peer's error): nothing is committed."""
        self._writer.abort()
        if not self._writer.committed:
            written = self._writer.written - self.start
            self._request.end("failed", error=exc, size=written, level=logging.WARNING)


class Download:
    """An open file to send: what it was when opened, and how to read it."""

    def __init__(self, request: _Request, name: Name, readable: Readable) -> None:
        self._request, self.name, self._readable = request, name, readable
        self.size, self.mtime_ns, self.mode = readable.size, readable.mtime_ns, readable.mode
        self.digest = readable.digest
        """The whole file's digest when the store knows it (the sender need not hash)."""

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._request.ended:
            self._request.end("aborted", reason="ended before the last byte")
        self._readable.close()

    def fileno(self) -> int | None:
        """The descriptor for sendfile, if the store has one (zero copy)."""
        return zero_copy_fd(self._readable)

    def read(self, offset: int, n: int) -> bytes:
        return self._readable.read(offset, n)

    def sent(self, digest: bytes | None = None, *, start: int = 0) -> None:
        """Every byte went out (those from ``start``: a resume), with this digest,
        remembered if it was computed."""
        if self.digest is None and digest:
            self._readable.remember_digest(digest)
        self._request.end(size=self.size - start, digest=self.digest or digest or None)

    def remember_chunks(self, chunks: list[bytes]) -> None:
        """The whole chunks a send hashed from the start (a later GET_AT needs them)."""
        self._readable.remember_chunks(chunks)

    def resume_point(self, offset: int, size: int, mtime_ns: int, prefix: bytes) -> list[bytes]:
        """GET_AT: the chunk digests before ``offset`` if the client's first
        ``offset`` bytes are of this very file (same size and mtime, same prefix
        digest), else [] (it gets the whole file). Blocking: without a remembered
        manifest, it reads the prefix once."""
        count, rest = divmod(offset, CHUNK_BYTES)
        if rest or not count or (size, mtime_ns) != (self.size, self.mtime_ns) or offset > size:
            return []
        chunks = self._readable.chunk_digests(count)
        return chunks if len(chunks) == count and prefix_digest(chunks) == prefix else []

    def failed(self, exc: FtransferError) -> None:
        self._request.end("failed", error=exc, level=logging.WARNING)


class Operations:
    """Requests from any transport, against one Store, under one Policy."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        users: Authenticator | None = None,
        log: logging.Logger = logger,
    ) -> None:
        self.store, self.policy, self.log = store, policy, log
        self.remote = bool(getattr(store, "remote", False))
        """The store is across a network (an object store): even opening a file
        waits for it, so the services open files in worker threads too."""
        self.users = users
        self._scoped: dict[tuple[str, ...], Store] = {}
        self._scoped_lock = threading.Lock()
        self._logins = threading.BoundedSemaphore(LOGINS_AT_ONCE)
        self._resumables: dict[tuple[str, str, bytes], Upload] = {}
        """The resumable uploads running, by (user, name, transfer id)."""
        self._resumables_lock = threading.Lock()
        self._totals: tuple[TokenBucket | None, TokenBucket | None] | None = None
        """The server's total buckets (out, in), made on the first request's clock
        (the services' clock: the loop's, or a simulator's)."""

    # ---- rates: the server's limits (proto/ratelimit.py) -----------------------------

    def send_limits(self, now: float, asked: int | None = None) -> Limits | None:
        """What one connection's (or UDP session's) sending keeps to: its own bucket
        at the server's per-connection rate or the client's ``asked`` rate,
        whichever is less, and the server's total."""
        rate = min((r for r in (self.policy.max_rate, asked) if r), default=None)
        return limits(bucket(rate, now), self._total(now)[0])

    def receive_limits(self, now: float) -> Limits | None:
        """What one connection's receiving keeps to (TCP: the server reads no
        faster): its own bucket and the server's total."""
        return limits(bucket(self.policy.max_rate, now), self._total(now)[1])

    def _total(self, now: float) -> tuple[TokenBucket | None, TokenBucket | None]:
        if self._totals is None:
            rate = self.policy.max_total_rate
            self._totals = (bucket(rate, now), bucket(rate, now))
        return self._totals

    def receive_rate(self) -> int | None:
        """The rate a UDP uploader is told to keep to (it paces itself): the
        tighter of the two limits, as a sender cannot share a bucket it does not
        hold."""
        rates = [r for r in (self.policy.max_rate, self.policy.max_total_rate) if r]
        return min(rates) if rates else None

    # ---- who: logins and principals ----------------------------------------------

    @property
    def anonymous(self) -> Principal:
        """The principal of a request that did not log in."""
        if self.users is not None:
            return NOBODY
        can_change = self.policy.anonymous_write
        return Principal(write=can_change, delete=can_change)

    def login(self, who: Requester, host: str, user: str, password: str, now: float) -> Verdict:
        """Check a LOGIN (blocking: one scrypt); its record has the name tried and
        never the password. ``host`` is the address a lockout counts."""
        from .users import FAILED_MESSAGE, Verdict

        request = _Request(self.log, who, "login", None, user=user)
        if self.users is None:
            request.refused(AuthenticationFailed("this server has no users"), level=logging.WARNING)
            return Verdict(user=None, answer_at=now, reason=FAILED_MESSAGE)
        with self._logins:
            verdict = self.users.check(user, password, host, now)
        if verdict.user is None:
            request.refused(AuthenticationFailed(verdict.reason), level=logging.WARNING)
        else:
            request.end()
        return verdict

    def ticket(self, who: Requester, issue: Callable[[], T]) -> T:
        """A TICKET: ``issue()`` makes the keys of one sealed UDP request, if
        ``who`` is served at all (what that request may do is checked when it
        comes, by ``_allow``). Its record never has the secret."""
        request = _Request(self.log, who, "ticket", None)
        try:
            self.check_served(who)
            ticket = issue()
        except FtransferError as exc:
            request.refused(exc)
            raise
        request.end(level=logging.DEBUG)  # the UDP request it is for is logged too
        return ticket

    @staticmethod
    def principal_of(verdict: Verdict) -> Principal:
        """The principal a successful login speaks for."""
        user = verdict.user
        assert user is not None
        root = parse_name(user.root, allow_root=True) if user.root else ROOT
        perms = user.permissions
        return Principal(
            user=user.name, root=root, read=perms.read, write=perms.write, delete=perms.delete
        )

    def _store(self, who: Requester) -> Store:
        """The store a principal's names resolve in: its root."""
        root = who.principal.root
        if not root.parts:
            return self.store
        with self._scoped_lock:
            store = self._scoped.get(root.parts)
            if store is None:
                store = self._scoped[root.parts] = self.store.scoped(root)
            return store

    def close(self) -> None:
        """Release the users' stores (the main one is the server's to close)."""
        with self._scoped_lock:
            for store in self._scoped.values():
                store.close()
            self._scoped.clear()

    # ---- the seam: names, permissions, limits -------------------------------------

    def _begin(
        self, who: Requester, operation: str, path: str, target: str | None = None
    ) -> _Request:
        return _Request(self.log, who, operation, path, target)

    def check_served(self, who: Requester) -> None:
        """LoginRequired unless ``who`` is served at all (TICKET: what the UDP
        request may do is checked when it comes, by ``_allow``)."""
        if not who.principal.served:
            raise LoginRequired("this server requires a login: user@host")

    def _allow(self, who: Requester, action: str, name: Name) -> None:
        """Whether ``who`` may do ``action`` ("read", "write", "delete") to ``name``:
        the one permission check of every transport and operation."""
        self.check_served(who)
        principal = who.principal
        if action != "read" and self.policy.read_only:
            raise ReadOnly("the server is read-only")
        if getattr(principal, action):
            return
        if not principal.user:
            raise ReadOnly("anonymous access is read-only")
        verb = {"read": "read", "write": "change", "delete": "remove"}[action]
        raise NotPermitted(f"{principal.user} may not {verb} files here")

    def _checked(
        self,
        request: _Request,
        who: Requester,
        path: str,
        action: str,
        *,
        allow_root: bool = False,
    ) -> Name:
        try:
            name = parse_name(path, allow_root=allow_root)
            self._allow(who, action, name)
        except FtransferError as exc:
            request.refused(exc)
            raise
        return name

    # ---- transfers -----------------------------------------------------------------

    def upload(
        self,
        who: Requester,
        path: str,
        *,
        size: int | None,
        mtime_ns: int = -1,
        mode: int | None = None,
        exclusive: bool = False,
        resumable: Resumable | None = None,
    ) -> Upload:
        """Accept an upload of ``size`` bytes (None: not known, TFTP without tsize)
        or refuse it, before any byte is read. ``resumable``: the client keeps a
        record of it, so it is written as a partial that survives an interruption
        (storage/partial.py), maybe continuing one from ``resumable.offset``."""
        request = self._begin(who, "put", path)
        name = self._checked(request, who, path, "write")
        limit = self.policy.max_file_bytes
        try:
            if size is not None and size > limit:
                raise TooLarge(f"{name}: {size} bytes exceeds the limit of {limit}")
            resume = None if resumable is None else self._resume(who, name, resumable)
            if resumable is not None:
                self._take_over(who, name, resumable)
            writer = self._store(who).open_write(
                name,
                size=size,
                mtime_ns=mtime_ns,
                mode=mode,
                exclusive=exclusive,
                limit=limit,
                resume=resume,
            )
        except FtransferError as exc:
            request.refused(exc)
            raise
        self.log.debug("%s %s put %s: receiving %s bytes", who.peer, who.transport, name, size)
        start = 0 if resumable is None else resumable.offset
        upload = Upload(request, name, writer, start=start)
        if resumable is not None:
            with self._resumables_lock:
                self._resumables[(who.principal.user, name.text, resumable.transfer_id)] = upload
        return upload

    def _take_over(self, who: Requester, name: Name, resumable: Resumable) -> None:
        """A request with a resumable upload's own transfer id comes from the
        client that made it (the id is its secret): if the old upload still holds
        the partial (a UDP session of a killed client lives until its give-up
        time; a TCP connection whose network dropped, until its idle timeout), it
        is ended, keeping the partial, so the new one resumes instead of waiting."""
        key = (who.principal.user, name.text, resumable.transfer_id)
        with self._resumables_lock:
            for stale in [k for k, up in self._resumables.items() if up.ended]:
                del self._resumables[stale]
            old = self._resumables.pop(key, None)
        if old is not None and not old.ended:
            old.abort("taken over by a resume of the same transfer")

    @staticmethod
    def _resume(who: Requester, name: Name, resumable: Resumable) -> Resume:
        """A partial is bound to the user and the name, besides what the client says."""
        return Resume(
            binding={"user": who.principal.user, "name": name.text},
            transfer_id=resumable.transfer_id,
            first_digest=resumable.first_digest,
            offset=resumable.offset,
        )

    def partial(
        self, who: Requester, path: str, *, size: int, mtime_ns: int, resumable: Resumable
    ) -> Probe:
        """PARTIAL: where a resume of this upload may start (blocking: it reads a
        journal). Refused like the upload itself would be."""
        request = self._begin(who, "partial", path)
        name = self._checked(request, who, path, "write")
        try:
            probe = self._store(who).partial(
                name, size=size, mtime_ns=mtime_ns, resume=self._resume(who, name, resumable)
            )
        except FtransferError as exc:
            request.refused(exc)
            raise
        request.end(reason=f"holds {probe.offset} bytes of it")
        return probe

    def download(self, who: Requester, path: str) -> Download:
        """Open a file to send, or refuse."""
        request = self._begin(who, "get", path)
        name = self._checked(request, who, path, "read")
        try:
            readable = self._store(who).open_read(name)
        except FtransferError as exc:
            request.refused(exc)
            raise
        return Download(request, name, readable)

    # ---- the rest ------------------------------------------------------------------

    def stat(self, who: Requester, path: str) -> tuple[Entry, bytes | None]:
        """What ``path`` is and, for a regular file, its digest (blocking: it may
        hash the file)."""
        request = self._begin(who, "stat", path)
        name = self._checked(request, who, path, "read", allow_root=True)
        try:
            store = self._store(who)
            entry = store.stat(name)
            digest = store.digest(name) if entry.kind is EntryKind.FILE else None
        except FtransferError as exc:
            request.refused(exc)
            raise
        request.end()
        return entry, digest

    def listing(self, who: Requester, path: str) -> Generator[Entry, None, None]:
        """A directory's entries, as the store finds them (blocking)."""
        request = self._begin(who, "ls", path)
        name = self._checked(request, who, path, "read", allow_root=True)
        count = 0
        try:
            for entry in self._store(who).list(name):
                count += 1
                yield entry
        except FtransferError as exc:
            request.refused(exc)
            raise
        finally:
            request.end(entries=count)

    def remove(self, who: Requester, path: str) -> None:
        request = self._begin(who, "rm", path)
        name = self._checked(request, who, path, "delete")
        self._run(request, lambda: self._store(who).remove(name))

    def mkdir(self, who: Requester, path: str, *, parents: bool) -> None:
        request = self._begin(who, "mkdir", path)
        name = self._checked(request, who, path, "write")
        self._run(request, lambda: self._store(who).mkdir(name, parents=parents))

    def move(self, who: Requester, source: str, target: str, *, exclusive: bool) -> None:
        request = self._begin(who, "mv", source, target)
        names = [self._checked(request, who, text, "write") for text in (source, target)]
        self._run(request, lambda: self._store(who).move(names[0], names[1], exclusive=exclusive))

    @staticmethod
    def _run(request: _Request, action: Callable[[], object]) -> None:
        try:
            action()
        except FtransferError as exc:
            request.refused(exc)
            raise
        request.end()
