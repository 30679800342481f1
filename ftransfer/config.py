"""Every limit, timeout and default in one place, with units and a reason.

The protocol constants are part of the wire contract (protocol.md); the records
hold what an operator or a client may tune. Both are frozen: a running server never
changes them. This module is imported by every command, so it imports nothing
heavy (records, not dataclasses: see _records.py).
"""

from __future__ import annotations

from ._records import Record

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

PROTOCOL_VERSION = 4
"""The only TCP wire version this build speaks (protocol.md, "Versions"): 3 added
LOGIN and TLS 1.3; 4 defines the digest as the tree digest (checksum.py) and adds
resumable transfers (PARTIAL, PUT_AT, GET_AT, FILE_AT)."""
DEFAULT_PORT = 9021
"""TCP and UDP port when a REMOTE names none."""
TFTP_PORT = 69
"""TFTP's well-known port (RFC 1350), for tftp:// URLs that name none."""
SYSLOG_PORT = 514
"""syslog's UDP port (RFC 5426), for a ``--syslog HOST`` that names none."""
SYSLOG_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
"""RFC 5424 section 6.2.1's facility codes, by the names syslog.conf uses."""
SYSLOG_FACILITY = "daemon"
"""The facility of the server's messages unless ``--syslog-facility`` says."""
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
MAX_PASSWORD_BYTES = 1024
"""Longest password LOGIN carries (scrypt hashes any length; this bounds the frame)."""
MAX_ERROR_MESSAGE_BYTES = 1024
"""An ERROR frame's reason is truncated to this many bytes before sending."""
LIST_BATCH_BYTES = 32 * KIB
"""A listing is streamed in ENTRIES frames of about this size (encoded bytes: at most
one entry more, far below MAX_CONTROL_BYTES)."""
LIST_BATCH_ENTRIES = 512
"""... and of at most this many entries (protocol.md section 3), so that a frame of
short names is not thousands of entries for the client to decode at once."""

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
PARTIAL_PREFIX = ".ftransfer-part-"
"""Prefix of resumable partial files and their journals (storage/partial.py):
never listed, never served, refused as names, like temporaries."""
RESERVED_PREFIXES = (TEMP_PREFIX, PARTIAL_PREFIX)
PARTIAL_TTL_S = 24 * 3600.0
"""A partial untouched for this long is removed and never resumed (--partial-ttl)."""

MAX_CONNECTIONS_LIMIT = 100_000
"""The most --max-connections / --max-per-address accept (each costs ~1 MiB)."""


GIVE_UP_S = 30.0
"""A UDP transfer with no progress for this long fails (both ends)."""
CLIENT_TIMEOUT_S = 60.0
"""The client gives up on a TCP server silent for this long (--timeout)."""
CONNECT_TIMEOUT_S = 10.0
"""Resolving and connecting must finish within this; and a TCP peer silent for this
long after HELLO is no ftransfer server (or is stuck): a protocol error, not the
idle timeout. A loaded server (a slow disk, an fsync on its loop) still answers."""
UDP_CHUNK_BYTES = 1400
"""UDP payload per datagram by default: a 1,434-byte datagram fits a 1,500-byte MTU
over IPv6 (proto/udp/packets.py has the datagram layout)."""
UDP_MIN_CHUNK_BYTES = 512
"""Smallest payload a peer may propose: below it the headers dominate (a request
outside UDP_MIN_CHUNK_BYTES..UDP_MAX_CHUNK_BYTES is refused)."""
UDP_MAX_CHUNK_BYTES = 65000
"""Largest payload a peer may propose (fits a 64 KiB datagram)."""
TFTP_MIN_BLKSIZE, TFTP_MAX_BLKSIZE = 8, 65464
"""RFC 2348's range of blksize."""
TFTP_MAX_WINDOWSIZE = 65535
"""RFC 7440's largest windowsize (the smallest is 1)."""
TFTP_BLKSIZE = 1428
"""TFTP block size the client asks for: 1428 + 4 + 8 + 40 = 1480 fits a 1,500-byte
MTU over IPv6."""
TFTP_WINDOWSIZE = 32
"""TFTP windowsize the client asks for (RFC 7440; servers without it run lockstep)."""
TFTP_GIVE_UP_S = 15.0
"""A TFTP transfer with no progress for this long fails."""


class ServerConfig(Record):
    """What `ftransfer serve` accepts; every limit has a safe default."""

    root: str = "."
    store: str | None = None
    """An object store to serve instead of ``root``: ``s3://BUCKET[/PREFIX]``."""
    s3_endpoint: str | None = None
    """The S3-compatible store's URL (None: AWS, or boto3's AWS_ENDPOINT_URL)."""
    s3_region: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    read_only: bool = False
    tls: bool = True
    """TLS 1.3 on TCP (False: ``--insecure``, the plaintext protocol)."""
    state_dir: str | None = None
    """Where the server keeps its key and certificate (None: the XDG state dir)."""
    cert_file: str | None = None
    """A CA-issued certificate (with ``key_file``) in place of the self-signed one."""
    key_file: str | None = None
    users_file: str | None = None
    """The users (``ftransfer user add``); set, every client must log in."""
    anonymous_write: bool = False
    """Without users, anonymous clients may change files (off: read-only)."""
    tftp_writable: bool = False
    """TFTP clients may upload (TFTP has no authentication: RFC 1350)."""
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
    max_rate: int | None = None
    """Bytes per second each TCP connection or UDP session may move each way."""
    max_total_rate: int | None = None
    """Bytes per second the whole server may move each way (TCP and UDP together)."""
    fsync: bool = True
    """fsync each file and its directory before reporting success."""
    partial_ttl_s: float = PARTIAL_TTL_S
    """How long an interrupted upload's partial is kept for a resume."""
    udp: bool = True
    """Also serve the UDP protocol."""
    udp_port: int | None = None
    """UDP port; None means the same number as the TCP port."""
    udp_give_up_s: float = GIVE_UP_S
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
    tftp_give_up_s: float = TFTP_GIVE_UP_S
    """A TFTP transfer with no progress for this long ends with ERROR 0 "timed out"."""


class ClientConfig(Record):
    """What a client may tune; the defaults suit most links."""

    limit_rate: int | None = None
    """Bytes per second this client moves at most, each transfer (curl's
    --limit-rate); on UDP the server is told it for a download."""
    insecure: bool = False
    """Plaintext TCP (the server must run with --insecure too); TLS 1.3 otherwise."""
    known_hosts: str | None = None
    """Trusted server fingerprints (None: ~/.config/ftransfer/known_hosts)."""
    strict_host_keys: bool = False
    """Refuse a server not in known_hosts (else record it on first use, as ssh's
    accept-new)."""
    fingerprint: str | None = None
    """Trust only the server whose key has this ``SHA256:...`` (a pin)."""
    ca_file: str | None = None
    """Trust servers whose certificate this CA signed (the host name is checked)."""

    connect_timeout_s: float = CONNECT_TIMEOUT_S
    """Resolving and connecting (TCP) must finish within this."""
    idle_timeout_s: float = CLIENT_TIMEOUT_S
    """A TCP server that sends nothing for this long ends the request (timeout)."""
    udp_chunk_bytes: int = UDP_CHUNK_BYTES
    """UDP payload per datagram (the server may choose less)."""
    udp_give_up_s: float = GIVE_UP_S
    """A UDP transfer with no progress for this long fails."""
    udp_cc: str = "bbr"
    """UDP congestion control: "bbr" or "reno"."""
    tcp_port: int | None = None
    """udp://: the server's TCP port, where the TLS connection that brings each UDP
    request's keys goes (None: the UDP port, as a server binds both by default)."""
    tftp_blksize: int = TFTP_BLKSIZE
    tftp_windowsize: int = TFTP_WINDOWSIZE
    tftp_netascii: bool = False
    """TFTP text mode (CR LF line ends on the wire)."""
    resume: bool = True
    """An interrupted transfer of a file over one chunk resumes when run again
    (client/resume.py); False: every transfer starts from 0 (--no-resume)."""
    state_dir: str | None = None
    """Where upload resume records are kept (None: $XDG_STATE_HOME/ftransfer)."""
    tftp_give_up_s: float = TFTP_GIVE_UP_S
