"""io/tls.py: the server's identity, SPKI fingerprints, TLS 1.3 contexts."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from ftransfer.errors import UsageError
from ftransfer.io import tls


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key, created = tls.ensure_identity(str(tmp_path_factory.mktemp("id") / "state"))
    assert created
    return cert, key


@pytest.fixture(scope="module")
def other_identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key, _created = tls.ensure_identity(str(tmp_path_factory.mktemp("other")))
    return cert, key


def der_of(cert_path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text())


def expected_fingerprint(certificate: x509.Certificate) -> str:
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


# -- directories ------------------------------------------------------------------


def test_directories_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "s"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "c"))
    assert tls.state_dir_default() == str(tmp_path / "s" / "ftransfer")
    assert tls.config_dir_default() == str(tmp_path / "c" / "ftransfer")
    assert tls.known_hosts_default() == str(tmp_path / "c" / "ftransfer" / "known_hosts")


def test_directories_default_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/is/ignored")
    assert tls.state_dir_default() == str(tmp_path / ".local" / "state" / "ftransfer")
    assert tls.config_dir_default() == str(tmp_path / ".config" / "ftransfer")


# -- identity ---------------------------------------------------------------------


def test_identity_is_created_once_with_private_modes(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    cert, key, created = tls.ensure_identity(str(state))
    assert created
    assert (cert, key) == (str(state / "server.crt"), str(state / "server.key"))
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "BEGIN PRIVATE KEY" in Path(key).read_text()  # PKCS8, unencrypted
    assert not [name for name in os.listdir(state) if name.endswith(".tmp")]
    first = tls.fingerprint_of_file(cert)
    assert tls.ensure_identity(str(state)) == (cert, key, False)
    assert tls.fingerprint_of_file(cert) == first


def test_identity_is_remade_when_a_file_is_missing(tmp_path: Path) -> None:
    cert, key, _created = tls.ensure_identity(str(tmp_path))
    before = tls.fingerprint_of_file(cert)
    os.unlink(key)
    assert tls.ensure_identity(str(tmp_path))[2] is True
    assert tls.fingerprint_of_file(cert) != before  # a new key, so a new fingerprint


def test_certificate_contents(identity: tuple[str, str]) -> None:
    certificate = x509.load_pem_x509_certificate(Path(identity[0]).read_bytes())
    host = socket.gethostname()
    cn = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert cn[0].value == f"ftransfer {host}"
    assert certificate.issuer == certificate.subject
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(san.value.get_values_for_type(x509.DNSName)) == {host, "localhost"}
    basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca is False
    now = datetime.datetime.now(datetime.UTC)
    assert certificate.not_valid_before_utc < now - datetime.timedelta(hours=23)
    assert certificate.not_valid_after_utc > now + datetime.timedelta(days=3649)


# -- fingerprints -----------------------------------------------------------------


def test_fingerprint_is_the_public_keys(identity: tuple[str, str]) -> None:
    certificate = x509.load_pem_x509_certificate(Path(identity[0]).read_bytes())
    assert tls.fingerprint(der_of(identity[0])) == expected_fingerprint(certificate)
    assert tls.fingerprint_of_file(identity[0]) == expected_fingerprint(certificate)
    assert len(tls.fingerprint_of_file(identity[0])) == len("SHA256:") + 43


def test_a_reissued_certificate_keeps_the_fingerprint(identity: tuple[str, str]) -> None:
    key = serialization.load_pem_private_key(Path(identity[1]).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "another name")])
    now = datetime.datetime.now(datetime.UTC)
    reissued = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    der = reissued.public_bytes(serialization.Encoding.DER)
    assert der != der_of(identity[0])
    assert tls.fingerprint(der) == tls.fingerprint_of_file(identity[0])


def test_fingerprint_of_the_first_certificate_in_a_file(
    identity: tuple[str, str], other_identity: tuple[str, str], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(
        "a comment\n" + Path(identity[0]).read_text() + Path(other_identity[0]).read_text()
    )
    assert tls.fingerprint_of_file(str(bundle)) == tls.fingerprint_of_file(identity[0])


@pytest.mark.parametrize("text", ["", "not a certificate\n", tls._PEM_HEADER + "\n!!!\n"])
def test_fingerprint_of_a_file_without_a_certificate(text: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.pem"
    path.write_text(text + tls._PEM_FOOTER * ("!!!" in text))
    with pytest.raises(UsageError, match=r"bad\.pem"):
        tls.fingerprint_of_file(str(path))


def test_fingerprint_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"missing\.pem"):
        tls.fingerprint_of_file(str(tmp_path / "missing.pem"))


def test_spki_der_rejects_every_truncation(identity: tuple[str, str]) -> None:
    der = der_of(identity[0])
    assert der[1] & 0x80  # long-form lengths are exercised
    for size in range(len(der)):
        with pytest.raises(ValueError):
            tls.spki_der(der[:size])
    with pytest.raises(ValueError):
        tls.spki_der(der + b"\x00")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x80\x00\x00",  # indefinite length
        b"\x30\x85\x01\x00\x00\x00\x00",  # oversized length
        b"\x31\x00",  # a SET, not a SEQUENCE
        b"\x30\x02\x02\x00",  # tbsCertificate is not a SEQUENCE
        b"\x30\x04\x30\x02\x02\x00",  # serial but nothing after
        b"\x1f\x00",  # high tag number
        b"garbage, not DER at all",
    ],
)
def test_spki_der_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        tls.spki_der(data)


def test_spki_der_walks_long_lengths_and_no_version() -> None:
    spki = b"\x30\x03\x02\x01\x05"
    fields = b"\x02\x01\x01" + b"\x30\x00" * 4 + spki
    tbs = b"\x30\x81" + bytes([len(fields)]) + fields  # a long form for a short length
    cert = b"\x30\x82" + len(tbs + b"\x30\x00").to_bytes(2, "big") + tbs + b"\x30\x00"
    assert tls.spki_der(cert) == spki


@given(st.binary(max_size=300))
def test_spki_der_returns_or_raises_value_error(data: bytes) -> None:
    try:
        result = tls.spki_der(data)
    except ValueError:
        return
    assert result in data


# -- contexts and handshakes ------------------------------------------------------


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[ssl.SSLSocket, list[BaseException]]:
    """A TLS handshake over a socket pair, the server in a thread: the client's
    socket (open), and what the server raised."""
    server_end, client_end = socket.socketpair()
    for end in (server_end, client_end):
        end.settimeout(10)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(server_end, server_side=True) as wrapped:
                wrapped.sendall(b"hello")
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)
        finally:
            server_end.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        wrapped = client.wrap_socket(client_end, server_hostname=hostname)
        assert wrapped.recv(5) == b"hello"
    except BaseException:
        client_end.close()
        raise
    finally:
        thread.join(10)
    return wrapped, errors


def test_tls13_handshake_with_a_pinned_fingerprint(identity: tuple[str, str]) -> None:
    wrapped, errors = handshake(tls.server_context(*identity), tls.client_context(None))
    with wrapped:
        assert wrapped.version() == "TLSv1.3"
        peer = wrapped.getpeercert(binary_form=True)
        assert peer is not None
        assert tls.fingerprint(peer) == tls.fingerprint_of_file(identity[0])
    assert not errors


def test_contexts_require_tls13(identity: tuple[str, str]) -> None:
    assert tls.server_context(*identity).minimum_version is ssl.TLSVersion.TLSv1_3
    client = tls.client_context(None)
    assert client.minimum_version is ssl.TLSVersion.TLSv1_3
    assert (client.check_hostname, client.verify_mode) == (False, ssl.CERT_NONE)


def test_the_certificate_as_its_own_ca(identity: tuple[str, str]) -> None:
    client = tls.client_context(identity[0])
    assert (client.check_hostname, client.verify_mode) == (True, ssl.CERT_REQUIRED)
    wrapped, errors = handshake(tls.server_context(*identity), client)
    with wrapped:
        assert wrapped.version() == "TLSv1.3"
    assert not errors


def test_another_ca_is_refused(identity: tuple[str, str], other_identity: tuple[str, str]) -> None:
    client = tls.client_context(other_identity[0])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls.server_context(*identity), client)


def test_a_wrong_hostname_is_refused(identity: tuple[str, str]) -> None:
    client = tls.client_context(identity[0])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls.server_context(*identity), client, hostname="elsewhere.example")


def test_server_context_names_the_missing_file(identity: tuple[str, str], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope\.crt"):
        tls.server_context(str(tmp_path / "nope.crt"), identity[1])
    with pytest.raises(UsageError, match=r"nope\.key"):
        tls.server_context(identity[0], str(tmp_path / "nope.key"))


def test_server_context_refuses_a_key_of_another_certificate(
    identity: tuple[str, str], other_identity: tuple[str, str]
) -> None:
    with pytest.raises(UsageError, match="belong together") as caught:
        tls.server_context(identity[0], other_identity[1])
    key_text = Path(other_identity[1]).read_text().splitlines()[1]
    assert key_text not in str(caught.value)


def test_server_context_refuses_a_file_that_is_not_pem(
    identity: tuple[str, str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("secret material\n")
    with pytest.raises(UsageError, match=r"junk\.key holds no PEM private key") as caught:
        tls.server_context(identity[0], str(junk))
    assert "secret" not in str(caught.value)


def test_client_context_names_a_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"ca\.pem"):
        tls.client_context(str(tmp_path / "ca.pem"))


def test_importing_the_module_pulls_in_neither_ssl_nor_cryptography() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ftransfer.io.tls as t;"
        "print(sorted({'ssl', 'cryptography'} & set(sys.modules)));"
        "t.client_context(None);"
        "print('cryptography' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["[]", "False"], out.stderr
