"""Netascii (RFC 1350 / RFC 764): the TFTP text mode.

Theory of operation: on the wire every line ends in CR LF and a bare CR is sent as
CR NUL. Encoding (local -> wire) is stateless byte substitution. Decoding (wire ->
local) must carry one byte of state, because a CR may end one block and its LF or
NUL start the next. A CR followed by anything else is kept as it is (tftp-hpa does
the same), and a CR at the very end is kept. Local line ends are LF (Unix).
"""

from __future__ import annotations

from collections.abc import Callable


def encode(data: bytes) -> bytes:
    """Local bytes to netascii."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class Decoder:
    """Netascii to local bytes, fed block by block."""

    def __init__(self) -> None:
        self._pending_cr = False

    def feed(self, data: bytes) -> bytes:
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._pending_cr = True
        return data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")

    def finish(self) -> bytes:
        """What is left at the end of the transfer (a final lone CR)."""
        pending, self._pending_cr = self._pending_cr, False
        return b"\r" if pending else b""


def encoding_reader(read: Callable[[int], bytes], chunk: int = 65536) -> Callable[[int], bytes]:
    """Wrap a sequential ``read(n)`` of local bytes into one of netascii bytes."""
    buffered = bytearray()
    eof = False

    def read_encoded(n: int) -> bytes:
        nonlocal eof
        while len(buffered) < n and not eof:
            raw = read(chunk)
            eof = not raw
            buffered.extend(encode(raw))
        out = bytes(buffered[:n])
        del buffered[:n]
        return out

    return read_encoded
