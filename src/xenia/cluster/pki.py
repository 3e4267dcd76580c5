"""ClusterCA and MemberTLS: the certificates etcd's traffic is authenticated with.

etcd checks client and peer certificates against a CA file (--trusted-ca-file,
--peer-trusted-ca-file); it has no notion of pinned self-signed certificates like the
host identity in peers/identity.py. So a cluster has a CA of its own, made at
`cluster init` and used for nothing but etcd:

- ca.crt: every member and every client trusts it; ca.key signs member certificates.
- member.key never leaves its host: a joining host makes the key and a certificate
  request (member_request()); a member that holds the CA issues the certificate
  (ClusterCA.issue()) and hands it back with ca.crt and ca.key.
- Every member keeps ca.key (0600), so any member can admit the next one and a dead
  founder does not freeze membership. This widens no trust: a member certificate already
  opens all of etcd (client-cert auth, no etcd users), i.e. the whole cluster state.

The member certificate names the host's cluster address as its only IP SAN: clients check
it (hostname verification against the URL), and etcd's peer listener checks a dialing
peer's IP SANs against the connection's source address. No DNS SANs: etcd would resolve
them on every peer connection that does not match by IP.

Files live in <state>/cluster/tls/ (0700). `cryptography` is imported only in functions.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from xenia.errors import InvalidConfig
from xenia.peers.identity import write_atomic

CA_CERT, CA_KEY = "ca.crt", "ca.key"
MEMBER_CERT, MEMBER_KEY = "member.crt", "member.key"
# Like the host identity: long enough that no cluster meets it. Renewal is a re-join.
VALID_DAYS = 20 * 365


@dataclass(frozen=True)
class MemberTLS:
    """The three files a member's etcd and its clients use."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def under(cls, directory: Path) -> MemberTLS:
        return cls(directory / CA_CERT, directory / MEMBER_CERT, directory / MEMBER_KEY)

    def missing(self) -> list[Path]:
        return [p for p in (self.ca, self.cert, self.key) if not p.is_file()]

    def client_context(self) -> ssl.SSLContext:
        """TLS client side: trusts only the cluster CA, presents the member certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common: str, org: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])


def _key_pem(key) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def check_address(address: str) -> str:
    """The cluster address: one IP address (etcd's URLs and the certificate use it)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise InvalidConfig(
            f"Failed to use '{address}' as the cluster address: it is not an IP address; "
            "give this host's address on the cluster network, e.g. 192.0.2.10"
        ) from None


@dataclass(frozen=True)
class ClusterCA:
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls, cluster: str) -> ClusterCA:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(f"xenia cluster {cluster} CA", "xenia cluster")
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))  # hosts' clocks differ
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        from cryptography.hazmat.primitives import serialization

        return cls(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @classmethod
    def load(cls, directory: Path) -> ClusterCA:
        try:
            return cls((directory / CA_CERT).read_bytes(), (directory / CA_KEY).read_bytes())
        except FileNotFoundError as e:
            raise InvalidConfig(
                f"Failed to load the cluster CA: {e.filename} is missing; this host does not "
                "hold the cluster CA (join the cluster again from a member that does)"
            ) from None

    def save(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(directory / CA_KEY, self.key_pem, 0o600)
        write_atomic(directory / CA_CERT, self.cert_pem, 0o644)

    def issue(self, csr_pem: bytes, address: str) -> bytes:
        """A member certificate for the request `csr_pem` (its subject's CN is the member
        name), valid for the cluster address `address`, as server and as client."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        address = check_address(address)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise InvalidConfig(f"Failed to read the certificate request: {e}") from None
        if not csr.is_signature_valid:
            raise InvalidConfig("Failed to read the certificate request: its signature does "
                                "not match its key")
        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject).issuer_name(ca_cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return cert.public_bytes(serialization.Encoding.PEM)


def member_request(name: str) -> tuple[bytes, bytes]:
    """(private key PEM, certificate request PEM) for member `name`, made on its host."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(_name(name, "xenia cluster member"))
           .sign(key, hashes.SHA256()))
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def install_member(directory: Path, ca: ClusterCA, key_pem: bytes, cert_pem: bytes
                   ) -> MemberTLS:
    """Write a member's files: the CA (with its key) and the member key and certificate.
    The key first, the certificate last, each through a rename (as the host identity)."""
    ca.save(directory)
    tls = MemberTLS.under(directory)
    write_atomic(tls.key, key_pem, 0o600)
    write_atomic(tls.cert, cert_pem, 0o644)
    return tls


def make_member(directory: Path, ca: ClusterCA, name: str, address: str) -> MemberTLS:
    """Key, certificate and CA files for member `name` on this host, from a CA held here
    (cluster init, and tests)."""
    key_pem, csr_pem = member_request(name)
    return install_member(directory, ca, key_pem, ca.issue(csr_pem, address))
