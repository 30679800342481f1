"""Names: the only parser of the names a peer sends (and a server's listings show).

Theory of operation
-------------------
A peer's name is untrusted text. ``parse_name`` turns it into a ``Name`` (its
components) or refuses it with ``PathRefused`` and a reason, before any storage is
touched. The rules (protocol.md section 7, THREATS "Names and paths") are:

- components are separated by ``/``; one trailing ``/`` is allowed and means the
  name must be a directory (``ls host/dir/``, as shells complete it);
- refused: the empty name (unless the root is allowed), a leading ``/``, empty
  components (``a//b``), ``.`` and ``..``, backslashes, NUL and every other
  control character (Unicode category Cc: C0, DEL and C1, whose U+009B is a
  terminal's CSI), format characters (Cf: bidi overrides such as U+202E,
  zero-width characters), a component shaped like a drive (``C:``, second
  character ``:``) in any position, a component over NAME_MAX or a name over
  PATH_MAX bytes, and the temporary-file prefix, reserved for uploads in progress;
- text that is not valid UTF-8 cannot arrive (the codecs refuse it), but a name a
  store reads from disk may hold undecodable bytes (as surrogates): such a name is
  refused too, so ``is_valid_component`` is also what listings use to leave out
  entries that no request could name. Whatever a listing shows can be requested.

``escape`` makes any name safe to print or log: control, format and surrogate
characters as ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN`` (an undecodable byte as
``\\xNN``), so that neither a peer's name nor one read from disk can drive the
terminal or reorder the text around it in a listing or a log line.
Nothing here touches the file system: containment is the store's job (openat with
O_NOFOLLOW in local.py); this module only guarantees that a ``Name`` has no
component that could climb out or alias another.
"""

from __future__ import annotations

from .._records import Record
from ..config import MAX_NAME_BYTES, MAX_PATH_BYTES, RESERVED_PREFIXES
from ..errors import PathRefused

_CONTROL = frozenset(chr(c) for c in [*range(0x20), 0x7F])
"""The ASCII control characters (the only ASCII characters in _UNSAFE)."""
_UNSAFE = {"Cc": "control", "Cf": "format"}
"""Unicode categories refused in names and escaped for display, by what they are."""
_ESCAPED = frozenset((*_UNSAFE, "Cs"))
"""What ``escape`` shows as escapes: the refused categories and lone surrogates."""
MAX_SHOWN_CHARS = 160
"""Names in messages and logs are cut in the middle to this many characters, so an
error's reason always fits the 1,024-byte ERROR frame after a 4,096-byte name."""


class Name(Record):
    """A checked name: its components (empty for the root)."""

    parts: tuple[str, ...]
    directory: bool = False
    """The name ended in ``/``: it must be a directory."""

    @property
    def text(self) -> str:
        """The canonical form, ``a/b/c`` ("" for the root)."""
        return "/".join(self.parts)

    @property
    def leaf(self) -> str:
        """The last component ("" for the root)."""
        return self.parts[-1] if self.parts else ""

    @property
    def parent(self) -> Name:
        return Name(parts=self.parts[:-1], directory=True)

    def child(self, leaf: str) -> Name:
        """``self/leaf``; ``leaf`` must be a single valid component."""
        if not is_valid_component(leaf):
            raise PathRefused(f"{shown(leaf)}: not a valid name")
        return Name(parts=(*self.parts, leaf))

    def is_within(self, other: Name) -> bool:
        """This name is ``other`` or lies below it."""
        return self.parts[: len(other.parts)] == other.parts

    def __str__(self) -> str:
        return shown(self.text) or "/"


ROOT = Name(parts=(), directory=True)


def _category(char: str) -> str:
    """The Unicode general category of a character outside ASCII."""
    import unicodedata  # (only for names that are not ASCII: start-up)

    return unicodedata.category(char)


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(name: str) -> str:
    """A name safe to print or log: control and format characters (C0, DEL, C1,
    bidi overrides, zero-width) and undecodable bytes shown as escapes."""
    if name.isascii():
        if name.isprintable():
            return name
        return "".join(_escaped(char) if char in _CONTROL else char for char in name)
    return "".join(
        char if char.isprintable() or _category(char) not in _ESCAPED else _escaped(char)
        for char in name
    )


def shown(name: str) -> str:
    """``escape(name)``, cut in the middle to MAX_SHOWN_CHARS: for messages."""
    text = escape(name)
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    half = MAX_SHOWN_CHARS // 2
    return f"{text[:half]}...{text[-half:]}"


def _utf8_length(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise PathRefused(f"{shown(text)}: not valid UTF-8") from None


def component_problem(part: str) -> str | None:
    """Why ``part`` cannot be a component, or None if it can."""
    if part in ("", ".", ".."):
        return "empty, '.' and '..' components are not allowed"
    if "/" in part:  # (a listing's entry is one component: "a/b" or "../x" is hostile)
        return "a component cannot hold '/'"
    if part.isascii():
        if any(char in _CONTROL for char in part):
            return "control characters are not allowed"
    else:
        for char in part:
            what = None if char.isprintable() else _UNSAFE.get(_category(char))
            if what is not None:
                return f"{what} characters are not allowed"
    if "\\" in part:
        return "backslashes are not allowed"
    if len(part) >= 2 and part[1] == ":":
        return "drive letters are not allowed"
    for prefix in RESERVED_PREFIXES:
        if part.startswith(prefix):
            return f"names starting {prefix!r} are reserved"
    try:
        size = len(part.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if size > MAX_NAME_BYTES:
        return f"component longer than {MAX_NAME_BYTES} bytes"
    return None


def is_valid_component(part: str) -> bool:
    """A name a request may use for one directory entry (what listings show)."""
    return component_problem(part) is None


def parse_name(text: str, *, allow_root: bool = False) -> Name:
    """The ``Name`` for a peer's text, or PathRefused saying why not."""
    directory = text.endswith("/") and len(text) > 1
    body = text[:-1] if directory else text
    if not body:
        if allow_root and not text:
            return ROOT
        raise PathRefused("empty name" if not text else "absolute names are not allowed")
    if _utf8_length(text) > MAX_PATH_BYTES:
        raise PathRefused(f"name longer than {MAX_PATH_BYTES} bytes")
    if body.startswith("/"):
        raise PathRefused(f"{shown(text)}: absolute names are not allowed")
    parts = tuple(body.split("/"))
    for part in parts:
        problem = component_problem(part)
        if problem is not None:
            raise PathRefused(f"{shown(text)}: {problem}")
    return Name(parts=parts, directory=directory)
