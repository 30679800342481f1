"""TLS for the TCP transport: the server's identity, its fingerprint, the contexts.

Theory of operation
-------------------
A server needs a certificate before it can speak TLS, and nobody should have to
run a CA to start one. On its first start ``ensure_identity`` makes a key (ECDSA
P-256) and a self-signed certificate in the state directory
(``$XDG_STATE_HOME/ftransfer``), written atomically (a temporary file in the same
directory, then ``os.replace``), the key first and never readable by others. This
is the only place ``cryptography`` is imported, inside the function: the client,
and every later server start, load the PEM files with ``ssl`` alone, which keeps
the cost of ``cryptography`` (tens of milliseconds) off a command's start-up.

Clients trust servers as ssh trusts hosts (client/known_hosts.py): they pin a
fingerprint, ``SHA256:`` and the unpadded base64 of the SHA-256 of the
certificate's SubjectPublicKeyInfo, the form OpenSSH prints. The public key is
pinned, not the certificate: a certificate re-issued for the same key (a new
validity period, another name) keeps its fingerprint. The key is found in the DER
certificate by a minimal DER walker (``spki_der``), so computing a fingerprint
needs neither ``cryptography`` nor the private ``ssl`` decoding helpers::

    Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    tbsCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
                                  issuer, validity, subject, subjectPublicKeyInfo, ... }

Both contexts require TLS 1.3. ``client_context(None)`` verifies nothing itself
(the caller checks the fingerprint after the handshake, as ssh does);
``client_context(ca)`` verifies the chain and the host name against that CA.

Memory: asyncio's SSL transport reads the socket into a per-connection buffer of
``SSLProtocol.max_size`` (256 KiB, zero-filled, so resident) kept for the
connection's whole life. ``limit_asyncio_tls_buffer`` lowers that class attribute
(the stdlib's one knob for it) to ASYNCIO_TLS_READ_BYTES for the server process:
250 idle TLS connections then hold 57 MiB instead of 105 MiB (the churn test).
But 64 KiB reads cost an upload one trip round the event loop (and a 64 KiB file
write) per four records: once the client sent its records in large writes
(io/tcp_sockets.py), a 256 MiB upload took 0.41-0.88 s with them and 0.34-0.47 s
with 256 KiB. So ``set_read_bytes`` gives one connection ASYNCIO_TLS_FILE_READ_BYTES
while a file streams in, and its small buffer back after: what asyncio has no
public knob for (the connection's SSLProtocol is the transport's
``_ssl_protocol``, its buffer ``_ssl_buffer``), so it does nothing where those
are not what 3.11-3.13 have (``tests/test_tls.py`` would say so).

``ssl`` is imported inside the functions that need it: the directory defaults and
the fingerprint arithmetic are used by commands that never open a TLS connection.
"""

from __future__ import annotations

import binascii
import hashlib
import os

from ..errors import UsageError

TYPE_CHECKING = False  # typing costs every command ~6 ms to import (_records.py)
if TYPE_CHECKING:
    import ssl

CERT_NAME = "server.crt"
KEY_NAME = "server.key"
FINGERPRINT_PREFIX = "SHA256:"
VALID_DAYS = 3650
_PEM_HEADER = "-----BEGIN CERTIFICATE-----"
_PEM_FOOTER = "-----END CERTIFICATE-----"


# -- where things live ----------------------------------------------------------


def _xdg_dir(variable: str, fallback: str) -> str:
    """``$variable/ftransfer``, or ``~/fallback/ftransfer`` when the variable is
    unset, empty or relative (the XDG base directory rule)."""
    base = os.environ.get(variable, "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), fallback)
    return os.path.join(base, "ftransfer")


def state_dir_default() -> str:
    """Where the server keeps its key and certificate."""
    return _xdg_dir("XDG_STATE_HOME", os.path.join(".local", "state"))


def config_dir_default() -> str:
    """Where the client keeps its configuration and known hosts."""
    return _xdg_dir("XDG_CONFIG_HOME", ".config")


def known_hosts_default() -> str:
    """The client's trust store (client/known_hosts.py)."""
    return os.path.join(config_dir_default(), "known_hosts")


# -- the server's identity ------------------------------------------------------


def ensure_identity(state_dir: str) -> tuple[str, str, bool]:
    """The paths of the server's certificate and key, and whether they were made
    now: both are made (a new key) if either is missing."""
    cert_path = os.path.join(state_dir, CERT_NAME)
    key_path = os.path.join(state_dir, KEY_NAME)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path, False
    if not os.path.isdir(state_dir):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)  # makedirs' mode is filtered by the umask
    key_pem, cert_pem = _new_identity()
    # The key first: a certificate present means its key is there too.
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert_pem, 0o644)
    return cert_path, key_path, True


def _new_identity() -> tuple[bytes, bytes]:
    """A new P-256 key (PEM, PKCS8, unencrypted) and its self-signed certificate."""
    import datetime
    import socket

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    host = socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ftransfer {host}")])
    dns_names = [n for n in dict.fromkeys([host, "localhost"]) if n and n.isascii()]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    """``data`` at ``path`` all at once: written and synced under a temporary name
    in the same directory (created with ``mode``), then renamed over ``path``."""
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    os.replace(temp, path)


# -- fingerprints -----------------------------------------------------------------


def _tlv(data: bytes, offset: int, limit: int) -> tuple[int, int, int]:
    """The DER element at ``offset`` (which must end by ``limit``): its tag, and
    where its contents start and end."""
    if offset + 2 > limit:
        raise ValueError("DER: truncated element")
    tag, first = data[offset], data[offset + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("DER: high tag numbers are not used in a certificate")
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise ValueError("DER: indefinite or oversized length")
        if start + count > limit:
            raise ValueError("DER: truncated length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > limit:
        raise ValueError("DER: element longer than its container")
    return tag, start, end


_SEQUENCE = 0x30
_INTEGER = 0x02
_VERSION = 0xA0  # [0] EXPLICIT, constructed
_BEFORE_SPKI = (_INTEGER, _SEQUENCE, _SEQUENCE, _SEQUENCE, _SEQUENCE)
"""serialNumber, signature, issuer, validity, subject."""


def spki_der(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo (header included) of a DER certificate; ValueError
    if the bytes are not shaped as one."""
    tag, start, end = _tlv(cert_der, 0, len(cert_der))
    if tag != _SEQUENCE or end != len(cert_der):
        raise ValueError("DER: a certificate is one SEQUENCE")
    tag, offset, tbs_end = _tlv(cert_der, start, end)
    if tag != _SEQUENCE:
        raise ValueError("DER: tbsCertificate is not a SEQUENCE")
    tag, _start, after = _tlv(cert_der, offset, tbs_end)
    if tag == _VERSION:
        offset = after
    for expected in _BEFORE_SPKI:
        tag, _start, offset_next = _tlv(cert_der, offset, tbs_end)
        if tag != expected:
            raise ValueError(f"DER: unexpected tag {tag:#04x} in tbsCertificate")
        offset = offset_next
    tag, _start, spki_end = _tlv(cert_der, offset, tbs_end)
    if tag != _SEQUENCE:
        raise ValueError("DER: subjectPublicKeyInfo is not a SEQUENCE")
    return cert_der[offset:spki_end]


def fingerprint(cert_der: bytes) -> str:
    """``SHA256:`` and the unpadded base64 of the SHA-256 of the certificate's
    public key (its SubjectPublicKeyInfo), as OpenSSH prints host keys."""
    digest = hashlib.sha256(spki_der(cert_der)).digest()
    return FINGERPRINT_PREFIX + binascii.b2a_base64(digest, newline=False).decode().rstrip("=")


def fingerprint_of_file(cert_path: str) -> str:
    """The fingerprint of the first certificate in a PEM file."""
    import ssl

    try:
        with open(cert_path, encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError as exc:
        raise UsageError(f"cannot read the certificate {cert_path}: {exc.strerror}") from None
    begin = text.find(_PEM_HEADER)
    end = text.find(_PEM_FOOTER, begin)
    if begin < 0 or end < 0:
        raise UsageError(f"{cert_path} holds no PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(text[begin : end + len(_PEM_FOOTER)])
        return fingerprint(der)
    except (ValueError, binascii.Error):
        raise UsageError(f"{cert_path} holds a malformed certificate") from None


# -- contexts -------------------------------------------------------------------


ASYNCIO_TLS_READ_BYTES = 64 * 1024
"""What asyncio's SSL transport reads from the socket at once (four TLS records)."""
ASYNCIO_TLS_FILE_READ_BYTES = 256 * 1024
"""... and on a connection while a file streams in (``set_read_bytes``)."""


def limit_asyncio_tls_buffer() -> None:
    """Give every asyncio SSL connection made from now on a read buffer of
    ASYNCIO_TLS_READ_BYTES instead of 256 KiB (module docstring: memory)."""
    from asyncio import sslproto

    sslproto.SSLProtocol.max_size = ASYNCIO_TLS_READ_BYTES


def set_read_bytes(transport: object, nbytes: int) -> bool:
    """Make one asyncio SSL connection read up to ``nbytes`` from its socket at once
    (a larger buffer is made by asyncio at its next read; a smaller one replaces
    the larger at once, so that its memory goes back). False if ``transport`` is
    no asyncio SSL transport of the shape this knows (nothing is changed)."""
    protocol = getattr(transport, "_ssl_protocol", None)
    buffer = getattr(protocol, "_ssl_buffer", None)
    if not isinstance(buffer, bytearray) or not isinstance(
        getattr(protocol, "max_size", None), int
    ):
        return False
    setattr(protocol, "max_size", nbytes)  # noqa: B010 (the instance's: the class keeps its own)
    if len(buffer) > nbytes:  # (asyncio copies what it read out of it before we run)
        smaller = bytearray(nbytes)
        setattr(protocol, "_ssl_buffer", smaller)  # noqa: B010 (a private attribute)
        setattr(protocol, "_ssl_buffer_view", memoryview(smaller))  # noqa: B010
    return True


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A TLS 1.3 server context with the server's certificate and key; UsageError
    naming the file that cannot be used."""
    import ssl

    _check_pem(cert_path, "CERTIFICATE-----", "certificate")
    _check_pem(key_path, "PRIVATE KEY-----", "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # No session tickets: nothing is resumed (each connection is a full handshake,
    # a millisecond), and an idle client then has nothing to read until the
    # server closes, which is how it tells a connection is still good.
    context.num_tickets = 0
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "invalid"
        raise UsageError(
            f"cannot use the certificate {cert_path} with the key {key_path}"
            f" (do they belong together?): {reason}"
        ) from None
    return context


def _check_pem(path: str, marker: str, what: str) -> None:
    """UsageError unless ``path`` can be read and holds a PEM ``what`` (nothing of
    the file's contents is ever put in the message)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if marker.encode() not in data:
        raise UsageError(f"{path} holds no PEM {what}")


def client_context(ca_path: str | None) -> ssl.SSLContext:
    """A TLS 1.3 client context: verifying the chain and the host name against the
    CA in ``ca_path``, or, without one, nothing (the caller pins the fingerprint)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_path is None:
        context.check_hostname = False  # before CERT_NONE, which it forbids
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context.load_verify_locations(ca_path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "invalid"
        raise UsageError(f"cannot load the CA certificates {ca_path}: {reason}") from None
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context
