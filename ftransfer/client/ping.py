"""``ftransfer ping``: timestamped UDP echoes to a server (no handshake, no state).

Theory of operation
-------------------
A PING carries a sequence number, our clock's timestamp and padding; the server
answers with a PONG of the same size to the source address (so it amplifies
nothing). Each echo waits up to ``timeout_s`` for its PONG, matched by sequence
number and timestamp; a late PONG of an earlier probe is ignored. An ICMP "port
unreachable" (nothing listens there) fails at once with ``ConnectionFailed``. The
socket and the wait are io/udp.py's (``echo``); this module builds and matches.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import ConnectionFailed
from ..io.udp import UdpSocket, echo, open_udp_socket
from ..proto.udp.packets import PacketError, Ping, Pong, decode_untrusted, encode
from .urls import Url

PING_PADDING = 48
"""Bytes of padding in a PING (the PONG is the same size: no amplification)."""


def ping(
    url: Url,
    *,
    count: int,
    interval_s: float,
    timeout_s: float,
    report: Callable[[int, float | None], None],
) -> list[float]:
    """Send ``count`` echoes; ``report(seq, rtt_ms or None)`` after each. The RTTs."""
    sock = open_udp_socket(url.host, url.port, connect=True)
    rtts: list[float] = []
    try:
        for seq in range(count):
            rtt = _one(sock, seq, timeout_s, url)
            report(seq, rtt)
            if rtt is not None:
                rtts.append(rtt)
            if seq + 1 < count:
                time.sleep(interval_s)  # the pace the user asked for
    finally:
        sock.close()
    return rtts


def _one(sock: UdpSocket, seq: int, timeout_s: float, url: Url) -> float | None:
    sent_ns = time.monotonic_ns()

    def answers(reply: bytes) -> bool:
        try:
            _session, body = decode_untrusted(reply)
        except PacketError:
            return False
        return isinstance(body, Pong) and body.seq == seq and body.timestamp_ns == sent_ns

    ping = encode(0, Ping(seq=seq, timestamp_ns=sent_ns, padding=PING_PADDING))
    try:
        answered = echo(sock, ping, timeout_s, answers)
    except ConnectionRefusedError:
        raise ConnectionFailed(
            f"udp {url.address}: port unreachable (no ftransfer there)"
        ) from None
    except OSError as exc:
        raise ConnectionFailed(f"ping {url.address}: {exc.strerror}") from None
    return (time.monotonic_ns() - sent_ns) / 1e6 if answered else None
