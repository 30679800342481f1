"""``--transport auto``: probe the path, then take UDP or TCP, and say why.

Theory of operation
-------------------
Before its first call, a client of an ``auto://`` URL sends ``PROBE_ECHOES`` UDP
echoes (``PING``, protocol.md U5) ``PROBE_SPACING_S`` apart and collects the
PONGs, for at most ``PROBE_DEADLINE_S``:

- no PONG at all (UDP blocked, filtered, or no UDP service), or an ICMP port
  unreachable: **TCP**, within that second;
- an echo lost: **UDP**. Random loss is what the UDP mode is built for and what
  the kernel's loss-based TCP (CUBIC, most of the Internet's) collapses under;
- a round trip of ``LONG_PATH_MS`` or more: **UDP**. On a long path a loss the
  probe did not see (1 % loss hides from ten echoes four times in five) costs
  TCP the most, and the UDP mode keeps up with TCP there when nothing is lost
  (benchmarks/bench_wan.py: 0.98x at 40 ms and no loss);
- otherwise (a short, clean path, a LAN): **TCP**, which sends files with
  sendfile and is the fastest there.

The echoes go over the authenticated session: with TLS (the default) the client
first takes a ticket on its TLS connection and seals every PING with it, and a
PONG counts only if it opens (a forged one is dropped, as in a transfer); a
server that serves no encrypted UDP refuses the ticket, and that is TCP too.
With ``--insecure`` they are plain U5 datagrams. The ``TransportChoice`` keeps
the figures and the one-line reason: the CLI prints it and puts it in every
``--json`` record.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from .._records import Record
from ..errors import ConnectionFailed
from .urls import Url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..proto.udp.sealed import Ticket

PROBE_ECHOES = 10
PROBE_SPACING_S = 0.005
PROBE_DEADLINE_S = 1.0
"""No PONG within this: UDP is taken to be blocked (the issue's "within a second")."""
LONG_PATH_MS = 10.0
"""From this round trip on, UDP (see the module docstring)."""
LINGER_RTTS = 4
"""After the last echo is sent, PONGs are waited for this many round trips..."""
LINGER_MIN_S = 0.1
"""...and at least this long: a PONG late on a busy machine is not a lost one."""


class TransportChoice(Record):
    """What ``auto`` chose, and why."""

    transport: str
    """"tcp" or "udp"."""
    reason: str
    rtt_ms: float | None
    """The median round trip of the echoes (None: none came back)."""
    lost: int
    sent: int

    def record(self) -> dict[str, object]:
        """The choice for a ``--json`` record."""
        return {
            "transport": self.transport,
            "reason": self.reason,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "echoes_lost": self.lost,
            "echoes_sent": self.sent,
        }


def choose(url: Url, ticket: Ticket | None = None) -> TransportChoice:
    """Probe ``url``'s server over UDP (sealed with ``ticket`` if one is given)
    and choose (see the module docstring)."""
    try:
        rtts, sent = probe(url, ticket)
    except ConnectionFailed:  # port unreachable: nothing listens for UDP there
        rtts, sent = [], 1
    return decide(rtts, sent)


def without_udp(reason: str) -> TransportChoice:
    """TCP, because the server said it has no (encrypted) UDP for us."""
    return TransportChoice(transport="tcp", reason=reason, rtt_ms=None, lost=0, sent=0)


def decide(rtts: list[float], sent: int) -> TransportChoice:
    """The rule, on the probe's round trips (ms) of ``sent`` echoes."""
    lost = sent - len(rtts)
    if not rtts:
        return TransportChoice(
            transport="tcp",
            reason=f"no UDP echo in {PROBE_DEADLINE_S:g} s: UDP is blocked or filtered",
            rtt_ms=None,
            lost=lost,
            sent=sent,
        )
    rtt = statistics.median(rtts)
    figures = f"rtt {rtt:.1f} ms, {lost} of {sent} echoes lost"
    if lost:
        why, transport = f"{figures}: a lossy path", "udp"
    elif rtt >= LONG_PATH_MS:
        why, transport = f"{figures}: a long path", "udp"
    else:
        why, transport = f"{figures}: a short, clean path", "tcp"
    return TransportChoice(transport=transport, reason=why, rtt_ms=rtt, lost=lost, sent=sent)


def probe(url: Url, ticket: Ticket | None = None) -> tuple[list[float], int]:
    """The round trips (ms) of the echoes that came back, and how many were sent."""
    from ..io.udp import open_udp_socket
    from ..proto.udp.packets import PacketError, Ping, Pong, decode_untrusted, encode
    from .ping import PING_PADDING

    seal, unseal = _sealing(ticket)
    sock = open_udp_socket(url.host, url.port, connect=True)
    sent: dict[int, int] = {}
    rtts: dict[int, float] = {}
    started = time.monotonic()
    stop_at = started + PROBE_DEADLINE_S
    try:
        while len(rtts) < PROBE_ECHOES and (now := time.monotonic()) < stop_at:
            if len(sent) < PROBE_ECHOES and now >= started + len(sent) * PROBE_SPACING_S:
                seq, stamp = len(sent), time.monotonic_ns()
                sent[seq] = stamp
                ping = encode(0, Ping(seq=seq, timestamp_ns=stamp, padding=PING_PADDING))
                sock.send(seal(ping))
                continue
            if len(sent) == PROBE_ECHOES and rtts:  # all sent: linger a few round trips
                linger = max(LINGER_RTTS * max(rtts.values()) / 1000, LINGER_MIN_S)
                stop_at = min(stop_at, started + len(sent) * PROBE_SPACING_S + linger)
            next_send = started + len(sent) * PROBE_SPACING_S
            wait = (next_send if len(sent) < PROBE_ECHOES else stop_at) - time.monotonic()
            sock.settimeout(max(wait, 0.0005))
            try:
                reply = sock.recv(2048)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                raise ConnectionFailed(f"udp {url.address}: port unreachable") from None
            opened = unseal(reply)
            if opened is None:
                continue  # (forged, replayed, or not for us)
            try:
                _session, body = decode_untrusted(opened)
            except PacketError:
                continue
            if isinstance(body, Pong) and sent.get(body.seq) == body.timestamp_ns:
                rtts[body.seq] = (time.monotonic_ns() - body.timestamp_ns) / 1e6
    finally:
        sock.close()
    return list(rtts.values()), len(sent)


def _sealing(
    ticket: Ticket | None,
) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes | None]]:
    """How a probe's datagrams are sealed and opened: with the ticket's keys, as a
    sealed request's (proto/udp/sealed.py), or not at all (``--insecure``)."""
    if ticket is None:
        return (lambda datagram: datagram), (lambda datagram: datagram)
    from ..proto.udp.sealed import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Opener, Sealer, SealStats

    sealer = Sealer(ticket.secret, CLIENT_TO_SERVER, ticket.ticket)
    opener = Opener(ticket.secret, SERVER_TO_CLIENT, ticket.ticket, SealStats())
    return sealer.seal, opener.open
