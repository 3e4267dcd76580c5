"""HostIdentity: this host's private key and self-signed certificate, made on first start.

Kept in <state>/tls/ (host.key 0600, host.crt 0644) and never regenerated on its own:
peers pin the certificate's fingerprint, so a new certificate means every peer has to
re-pin (`xenia host remove` + `xenia host add`). The certificate names the host and the
addresses known when it was made (hostname, loopback, the --listen address); those names
are for people and other tools, since Xenia's own peers check only the fingerprint.

Made with `cryptography`, imported only here and only in the daemon.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenia import files
from xenia.errors import BackendError
from xenia.paths import Paths
from xenia.peers import fingerprint

log = logging.getLogger(__name__)

KEY_FILE = "host.key"
CERT_FILE = "host.crt"
# Peers pin the fingerprint and ignore expiry, but other TLS tools look at it: long enough
# that no cluster meets it, short of the dates some tools mishandle.
VALID_DAYS = 20 * 365


def tls_dir(paths: Paths) -> Path:
    return paths.state / "tls"


@dataclass(frozen=True)
class HostIdentity:
    cert_path: Path
    key_path: Path
    pem: str
    fingerprint: str

    def ssl_server_context(self) -> ssl.SSLContext:
        """Server side of the TCP listener: TLS >= 1.2 with Python's default ciphers."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, **describe_pem(self.pem)}


def _load(cert_path: Path, key_path: Path) -> HostIdentity:
    pem = cert_path.read_text()
    der = ssl.PEM_cert_to_DER_cert(pem)
    return HostIdentity(cert_path, key_path, pem, fingerprint.of_der(der))


def ensure_identity(paths: Paths, addresses: Iterable[str] = ()) -> HostIdentity:
    """Load this host's identity, making it first if there is none."""
    d = tls_dir(paths)
    cert_path, key_path = d / CERT_FILE, d / KEY_FILE
    if cert_path.exists():
        if not key_path.exists():
            raise BackendError(
                f"Failed to load the host identity: {key_path} is missing while {cert_path} "
                f"exists; restore the key, or remove {cert_path} to make a new identity "
                "(every peer then has to re-pin this host)"
            )
        try:
            return _load(cert_path, key_path)
        except (OSError, ValueError, ssl.SSLError) as e:
            raise BackendError(
                f"Failed to load the host identity from {cert_path}: {e}; remove {d} to "
                "make a new one (every peer then has to re-pin this host)"
            ) from e
    ident = _generate(d, cert_path, key_path, addresses)
    log.info("made this host's TLS identity in %s; fingerprint %s", d, ident.fingerprint)
    return ident


def _san_names(addresses: Iterable[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) for the certificate: host name, loopback, given ones."""
    names = [socket.gethostname(), "localhost"]
    ips = ["127.0.0.1", "::1"]
    for a in addresses:
        if not a or a in ("0.0.0.0", "::"):
            continue
        try:
            ips.append(str(ipaddress.ip_address(a)))
        except ValueError:
            names.append(a)
    return list(dict.fromkeys(names)), list(dict.fromkeys(ips))


def _generate(d: Path, cert_path: Path, key_path: Path, addresses: Iterable[str]
              ) -> HostIdentity:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    # P-256: made in a millisecond, and every TLS stack speaks it.
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    dns, ips = _san_names(addresses)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, hostname),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xenia host"),
    ])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # hosts' clocks differ
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in dns]
            + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                              x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    # Key first, certificate last, each through a rename: a crash leaves either nothing
    # or a key without a certificate, and the next start then simply makes both anew.
    write_atomic(key_path, key_pem, 0o600)
    write_atomic(cert_path, cert_pem, 0o644)
    return _load(cert_path, key_path)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    # Under a random name, created with its final mode (the key is never readable by
    # others, not even briefly), renamed and the rename fsynced: a caller may drop the
    # only other copy next.
    files.write_atomic(path, data, mode)


def describe_pem(pem: str) -> dict[str, Any]:
    """Subject name, SANs and validity of a PEM certificate (for people to compare)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem.encode())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
            str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    return {
        "subject": str(cns[0].value) if cns else cert.subject.rfc4514_string(),
        "sans": sans,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
