"""Every limit, timeout and default in one place, with units and a reason.

The protocol constants are part of the wire contract (protocol.md); the dataclasses
hold what an operator may tune. Both are frozen: a running server never changes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

PROTOCOL_VERSION = 1
"""The only wire version this build speaks."""
DEFAULT_PORT = 9021
"""TCP (and later UDP) port when a REMOTE names none."""
HELLO_MAGIC = b"FTRN"
"""First four payload bytes of HELLO: rejects stray traffic at once."""

FRAME_HEADER_BYTES = 5
"""u8 type + u32 payload length."""
MAX_FRAME_BYTES = 4 * MIB
"""Largest payload of any frame: bounds what a peer can make us wait for."""
MAX_CONTROL_BYTES = 64 * KIB
"""Largest payload of a non-DATA frame; these are buffered whole, so keep it small."""
MAX_PATH_BYTES = 4096
"""Longest path a request may name (PATH_MAX on Linux)."""
MAX_NAME_BYTES = 255
"""Longest single path component (NAME_MAX on Linux)."""
MAX_ERROR_MESSAGE_BYTES = 1024
"""An ERROR frame's reason is truncated to this many bytes before sending."""
LIST_BATCH_BYTES = 32 * KIB
"""A listing is streamed in ENTRIES frames of about this size."""

RECV_BUFFER_BYTES = 1 * MIB
"""Reused receive buffer per connection (recv_into): large reads, no per-read allocation."""
HASH_SCRATCH_BYTES = 64 * KIB
"""Reused buffer for hashing file ranges sent with sendfile. Measured here: pread +
xxh3 through a 64 KiB buffer costs 0.155 s/GiB, through 128 KiB or more 0.46 s/GiB
(larger kernel copies leave the data out of cache), on the sender's busy core."""
SMALL_FILE_BYTES = 256 * KIB
"""Files up to this size are sent with one pread + write; larger ones with sendfile."""
CORK_BYTES = 64 * KIB
"""Queued outgoing frames are flushed once they reach this size (or earlier, see io.stream)."""
WRITE_HIGH_WATER_BYTES = 4 * MIB
"""Transport buffer above which a sender pauses (backpressure)."""
WRITE_LOW_WATER_BYTES = 1 * MIB
"""Transport buffer below which a paused sender resumes."""
TEMP_PREFIX = ".ftransfer-tmp-"
"""Prefix of in-progress uploads: never listed, never served, refused as names."""

MAX_CONNECTIONS_LIMIT = 100_000
"""The most --max-connections / --max-per-address accept (each costs ~1 MiB)."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """What `ftransfer serve` accepts; every limit has a safe default."""

    root: Path = Path(".")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    read_only: bool = False
    max_connections: int = 256
    """Connections served at once, all addresses together."""
    max_connections_per_address: int = 64
    """Connections at once from one IP address."""
    idle_timeout_s: float = 300.0
    """A connection with no bytes received for this long is closed."""
    hello_timeout_s: float = 10.0
    """Absolute deadline from accept to a complete HELLO (slow-header defence)."""
    max_file_bytes: int = 1024 * GIB
    """Largest upload accepted."""
    fsync: bool = True
    """fsync each file and its directory before reporting success."""
    udp: bool = True
    """Also serve the UDP protocol."""
    udp_port: int | None = None
    """UDP port; None means the same number as the TCP port."""
    udp_give_up_s: float = 30.0
    """A UDP session with no progress for this long is abandoned."""
    tftp_port: int | None = None
    """Also serve standard TFTP on this UDP port (None: off; 0 picks a free port)."""
    tftp_max_blksize: int = 65464
    """Largest blksize a TFTP client may negotiate (RFC 2348 allows 8..65464)."""
    tftp_max_window: int = 64
    """Largest windowsize a TFTP client may negotiate (RFC 7440)."""
    tftp_max_sessions: int = 64
    """TFTP transfers at once, all addresses together (one thread each)."""
    tftp_max_sessions_per_address: int = 8
    """TFTP transfers at once from one IP address."""
    tftp_give_up_s: float = 15.0
    """A TFTP transfer with no progress for this long ends with ERROR 0 "timed out"."""


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Client-side timeouts."""

    connect_timeout_s: float = 10.0
    """Connecting (resolution and TCP handshake) must finish within this."""
    idle_timeout_s: float = 60.0
    """A reply that makes no progress for this long ends the command with a timeout."""
