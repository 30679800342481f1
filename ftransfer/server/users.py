"""The server's users: names, scrypt password hashes, roots, permissions, lockout.

Theory of operation
-------------------
A server that serves users reads them from one text file (``load_users``), one
user a line, ``NAME:HASH:ROOT:PERMS``::

    alice:$scrypt$ln=14,r=8,p=1$<salt>$<key>:projects/alice:rwd
    guest:$scrypt$ln=14,r=8,p=1$<salt>$<key>::r

- **NAME** is 1-64 characters of ``[A-Za-z0-9._-]``, not starting with ``.`` or
  ``-`` (``check_user_name``): safe to print, to log and to use on a command line.
- **HASH** is ``$scrypt$ln=L,r=R,p=P$<salt>$<key>`` (``hash_password``): scrypt with
  N = 2**L, a 16-byte random salt and a 32-byte key, both base64 without padding.
  ``verify_password`` never raises on what it reads: a malformed or unsupported
  hash is simply a wrong password. Its parameters are bounded (L 10..20, R 1..16,
  P 1..4, at most 1 GiB of memory) so that a crafted file cannot make one login
  cost minutes or exhaust memory; keys are compared with ``hmac.compare_digest``.
- **ROOT** is where the user is confined inside the served root, in the canonical
  ``a/b`` form checked by ``storage.names.parse_name`` (no ``..``, nothing
  absolute); the empty root is the whole served root. It may hold ``:``: the line
  is split twice from the left (name, hash) and once from the right (perms).
- **PERMS** is any subset of ``r`` (read), ``w`` (write) and ``d`` (delete).

Any error in the file is a ``UsageError("FILE:LINE: reason")``, a duplicate name
included; ``#`` comments and blank lines are ignored. ``save_users`` (the CLI's
``user add``) writes the file atomically with mode 0600: a temporary file in the
same directory, fsync, ``os.replace``.

Logging in (``Authenticator.check``) costs the same whatever is wrong: an
unknown user's password is verified against ``dummy_hash()`` (the default
parameters), and every failure is answered ``failure_delay_s`` after the attempt,
with the one message ``FAILED_MESSAGE``; only the server's log tells the
``reason``. ``Lockout`` counts failures per address within a window and, after
``max_failures``, locks the address for ``lock_s``: a locked address is refused
before any scrypt is run, so it costs no CPU. Time is always passed in (``now``),
never read here, so the tests need no sleeps. The lockout tracks at most
``max_addresses`` addresses (least recently failed dropped first). Passwords and
hashes never appear in messages or reprs (``User``'s repr hides the hash).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

from .._records import Record
from ..errors import PathRefused, UsageError
from ..storage.names import parse_name

FAILED_MESSAGE = "authentication failed: wrong user name or password"
"""What a client is told for an unknown user and for a wrong password alike."""

MAX_NAME_CHARS = 64
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")

SALT_BYTES = 16
KEY_BYTES = 32
LOG_N_RANGE = range(10, 21)
R_RANGE = range(1, 17)
P_RANGE = range(1, 5)
MAX_SCRYPT_BYTES = 1 << 30
"""The most memory one verification may take (128 * r * N), whatever the file says."""
_INT_MAX = (1 << 31) - 1  # hashlib.scrypt's limit on maxmem

_HEADER = """\
# ftransfer users: one user a line, NAME:HASH:ROOT:PERMS
#   NAME   1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)
#   HASH   $scrypt$ln=L,r=R,p=P$SALT$KEY (written by 'ftransfer user add')
#   ROOT   the user's directory inside the served root (a/b), empty for all of it
#   PERMS  any of r (read), w (write), d (delete); empty for none
# Lines starting with # and blank lines are ignored.
"""


class Permissions(Record):
    """What a user may do: read (get, ls, stat), write (put, mkdir, move), delete."""

    read: bool = False
    write: bool = False
    delete: bool = False

    @classmethod
    def parse(cls, text: str) -> Permissions:
        """``"rwd"``, ``"r"``, ``"dr"``, ``""``...: ValueError saying why not."""
        for letter in text:
            if letter not in "rwd":
                raise ValueError(f"permission {letter!r} is not one of r, w, d")
            if text.count(letter) > 1:
                raise ValueError(f"permission {letter!r} is given twice")
        return cls(read="r" in text, write="w" in text, delete="d" in text)

    @property
    def text(self) -> str:
        """The canonical form: the letters in the order r, w, d."""
        flags = (("r", self.read), ("w", self.write), ("d", self.delete))
        return "".join(letter for letter, allowed in flags if allowed)


class User(Record):
    """One user of the users file (its repr hides the password hash)."""

    name: str
    password_hash: str
    root: str
    """Inside the served root, canonical ``a/b``; "" for the whole served root."""
    permissions: Permissions


def _user_repr(self: User) -> str:
    return (
        f"User(name={self.name!r}, password_hash='<hidden>', root={self.root!r}, "
        f"permissions={self.permissions!r})"
    )


# Record's metaclass installs its own __repr__ on every record: replaced after.
User.__repr__ = _user_repr  # type: ignore[method-assign,assignment]


def check_user_name(name: str) -> None:
    """UsageError, with the reason, unless ``name`` is a valid user name."""
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise UsageError(f"a user name has 1 to {MAX_NAME_CHARS} characters")
    if not set(name) <= _NAME_CHARS:
        raise UsageError("a user name has only the characters A-Z a-z 0-9 . _ -")
    if name[0] in ".-":
        raise UsageError("a user name cannot start with '.' or '-'")


# -- password hashes ---------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    """Base64 without padding; ValueError (binascii.Error) if it is not."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    maxmem = min(128 * r * n * 2 + 128 * r * p + (1 << 20), _INT_MAX)
    secret = password.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=KEY_BYTES)


def _check_parameters(log_n: int, r: int, p: int) -> str | None:
    """Why these scrypt parameters are refused, or None."""
    if log_n not in LOG_N_RANGE or r not in R_RANGE or p not in P_RANGE:
        return "scrypt parameters out of range (ln 10..20, r 1..16, p 1..4)"
    if 128 * r * (1 << log_n) > MAX_SCRYPT_BYTES:
        return f"scrypt parameters need more than {MAX_SCRYPT_BYTES >> 20} MiB"
    return None


def hash_password(
    password: str, *, salt: bytes | None = None, log_n: int = 14, r: int = 8, p: int = 1
) -> str:
    """``$scrypt$ln=14,r=8,p=1$<salt>$<key>`` for ``password`` (a random salt)."""
    problem = _check_parameters(log_n, r, p)
    if problem is not None:
        raise ValueError(problem)
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    elif not salt:
        raise ValueError("the salt is empty")
    key = _scrypt(password, salt, log_n, r, p)
    return f"$scrypt$ln={log_n},r={r},p={p}${_b64encode(salt)}${_b64encode(key)}"


class _Hash(Record):
    """A parsed password hash."""

    log_n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _small_int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 2 else None


def _parse_parameters(text: str) -> tuple[int, int, int] | None:
    fields = text.split(",")
    if len(fields) != 3:
        return None
    values = []
    for field, key in zip(fields, ("ln=", "r=", "p="), strict=True):
        value = _small_int(field.removeprefix(key)) if field.startswith(key) else None
        if value is None:
            return None
        values.append(value)
    log_n, r, p = values
    return None if _check_parameters(log_n, r, p) else (log_n, r, p)


def _parse_hash(encoded: str) -> _Hash | None:
    """The parts of a supported hash, or None for anything else."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
        return None
    parameters = _parse_parameters(parts[2])
    if parameters is None:
        return None
    try:
        salt, key = _b64decode(parts[3]), _b64decode(parts[4])
    except ValueError:
        return None
    if not salt or len(key) != KEY_BYTES:
        return None
    log_n, r, p = parameters
    return _Hash(log_n=log_n, r=r, p=p, salt=salt, key=key)


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``; False for a malformed hash, never
    an exception, whatever the stored text is."""
    parsed = _parse_hash(encoded)
    if parsed is None:
        return False
    try:
        key = _scrypt(password, parsed.salt, parsed.log_n, parsed.r, parsed.p)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(key, parsed.key)


@functools.cache
def dummy_hash() -> str:
    """A hash with the default parameters that no password is known for: an
    unknown user is verified against it, so that both paths cost one scrypt."""
    return hash_password(secrets.token_urlsafe(16))


# -- the users file ----------------------------------------------------------------


def check_root(root: str) -> str:
    """A user's root in canonical form ("" for the whole served root); ValueError
    with the reason if no request could name it."""
    problem = _root_problem(root)
    if problem is not None:
        raise ValueError(problem)
    return parse_name(root).text if root else ""


def _root_problem(root: str) -> str | None:
    if not root:
        return None
    try:
        parse_name(root)
    except PathRefused as error:
        return f"root: {error}"
    return None


def _parse_line(line: str) -> User:
    """The user on one line; ValueError with the reason (never quoting the hash)."""
    fields = line.split(":", 2)
    if len(fields) != 3 or ":" not in fields[2]:
        raise ValueError("expected NAME:HASH:ROOT:PERMS")
    name, password_hash, rest = fields
    root, perms = rest.rsplit(":", 1)
    try:
        check_user_name(name)
    except UsageError as error:
        raise ValueError(f"{name!r}: {error}") from None
    if _parse_hash(password_hash) is None:
        raise ValueError(f"user {name}: the password hash is not a supported scrypt hash")
    problem = _root_problem(root)
    if problem is not None:
        raise ValueError(f"user {name}: {problem}")
    try:
        permissions = Permissions.parse(perms)
    except ValueError as error:
        raise ValueError(f"user {name}: {error}") from None
    canonical = parse_name(root).text if root else ""
    return User(name=name, password_hash=password_hash, root=canonical, permissions=permissions)


def _read_text(path: str, missing_ok: bool) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise UsageError(f"{path}: no such users file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: the users file is not valid UTF-8") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read the users file: {error.strerror}") from None


def load_users(path: str, *, missing_ok: bool = False) -> dict[str, User]:
    """The users in the file at ``path``, by name, in the file's order. UsageError
    ("FILE:LINE: reason") for any error; a missing file is one unless
    ``missing_ok`` (then no users)."""
    users: dict[str, User] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(_read_text(path, missing_ok).split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            user = _parse_line(line)
        except ValueError as error:
            raise UsageError(f"{path}:{number}: {error}") from None
        if user.name in users:
            first = lines[user.name]
            raise UsageError(f"{path}:{number}: user {user.name} already on line {first}")
        users[user.name], lines[user.name] = user, number
    return users


def _format_line(key: str, user: User) -> str:
    """The line for one user, UsageError if it could not be read back."""
    check_user_name(user.name)
    if key != user.name:
        raise UsageError(f"user {user.name} is filed under another name")
    if _parse_hash(user.password_hash) is None:
        raise UsageError(f"user {user.name}: the password hash is not a supported scrypt hash")
    problem = _root_problem(user.root)
    if problem is not None:
        raise UsageError(f"user {user.name}: {problem}")
    return f"{user.name}:{user.password_hash}:{user.root}:{user.permissions.text}\n"


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)  # whatever the umask
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # already renamed, or never written
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the file itself is synced
    finally:
        os.close(fd)


def save_users(path: str, users: Mapping[str, User]) -> None:
    """Write ``users`` to ``path`` atomically, mode 0600, with the format's header."""
    text = _HEADER + "".join(_format_line(key, user) for key, user in users.items())
    try:
        _write_atomically(path, text)
    except OSError as error:
        raise UsageError(f"{path}: cannot write the users file: {error.strerror}") from None


# -- logging in --------------------------------------------------------------------


class _Tally(Record, frozen=False):
    """One address's recent failures and its lock."""

    failures: list[float]
    locked_until: float


class Lockout:
    """Failed logins per address: ``max_failures`` within ``window_s`` lock the
    address for ``lock_s``. Time is passed in; safe to call from several threads."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 600.0,
        lock_s: float = 600.0,
        max_addresses: int = 10000,
    ) -> None:
        if max_failures < 1 or max_addresses < 1 or window_s < 0 or lock_s < 0:
            raise ValueError("lockout limits must be positive")
        self.max_failures, self.window_s, self.lock_s = max_failures, window_s, lock_s
        self.max_addresses = max_addresses
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many addresses are tracked."""
        return len(self._tallies)

    def failed(self, address: str, now: float) -> None:
        """Count a failure; the one that reaches ``max_failures`` locks the address."""
        with self._lock:
            tally = self._tallies.pop(address, None) or _Tally(failures=[], locked_until=0.0)
            self._tallies[address] = tally  # now the most recent
            if tally.locked_until > now:
                return  # already locked: the lock is not extended
            since = now - self.window_s
            tally.failures = [when for when in tally.failures if when > since]
            tally.failures.append(now)
            if len(tally.failures) >= self.max_failures:
                tally.failures, tally.locked_until = [], now + self.lock_s
            while len(self._tallies) > self.max_addresses:
                self._tallies.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """Forget the address's failures."""
        with self._lock:
            self._tallies.pop(address, None)

    def locked_for(self, address: str, now: float) -> float:
        """Seconds until the address may try again; 0.0 if it is not locked."""
        with self._lock:
            tally = self._tallies.get(address)
            if tally is None or tally.locked_until <= now:
                return 0.0
            return tally.locked_until - now


class Verdict(Record):
    """The outcome of one login attempt."""

    user: User | None
    """The user logged in, None for a failure."""
    answer_at: float
    """When the server may answer (the same for every kind of failure)."""
    reason: str = ""
    """For the server's log only: "unknown user", "wrong password", "locked out"."""
    locked_s: float = 0.0
    """Seconds the address remains locked out (0.0 if it is not)."""

    @property
    def ok(self) -> bool:
        return self.user is not None


class Authenticator:
    """Checks logins against a table of users (see the module docstring)."""

    def __init__(
        self,
        users: Mapping[str, User],
        *,
        lockout: Lockout | None = None,
        verify: Callable[[str, str], bool] = verify_password,
        failure_delay_s: float = 1.0,
    ) -> None:
        self._users: Mapping[str, User] = dict(users)
        self._lockout = lockout
        self._verify = verify
        self._failure_delay_s = failure_delay_s

    def replace_users(self, users: Mapping[str, User]) -> None:
        """Use a new table from now on (the server re-reads the file on SIGHUP)."""
        self._users = dict(users)

    def check(self, name: str, password: str, address: str, now: float) -> Verdict:
        """The verdict on ``name``/``password`` from ``address`` at time ``now``."""
        lockout = self._lockout
        locked = lockout.locked_for(address, now) if lockout is not None else 0.0
        if locked > 0.0:  # refused before any scrypt: a locked address costs no CPU
            return self._failure(now, "locked out", locked)
        user = self._users.get(name)
        if user is None:
            self._verify(password, dummy_hash())  # the same work as for a known user
            return self._failed(address, now, "unknown user")
        if not self._verify(password, user.password_hash):
            return self._failed(address, now, "wrong password")
        if lockout is not None:
            lockout.succeeded(address)
        return Verdict(user=user, answer_at=now)

    def _failed(self, address: str, now: float, reason: str) -> Verdict:
        lockout = self._lockout
        if lockout is None:
            return self._failure(now, reason, 0.0)
        lockout.failed(address, now)
        return self._failure(now, reason, lockout.locked_for(address, now))

    def _failure(self, now: float, reason: str, locked_s: float) -> Verdict:
        return Verdict(
            user=None, answer_at=now + self._failure_delay_s, reason=reason, locked_s=locked_s
        )
