"""A throwaway certificate authority for simulated kiosks (P-256, as real kiosks use): the CA,
the switch's server certificate and terminals' client certificates, written as PEM files.
The tests of mutual TLS and the bench's mutual-TLS kiosks use it; nothing in production does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(*common_names: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name) for name in common_names])


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path)


class Authority:
    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        self.cert = (
            self._builder(self.name, self.key.public_key(), start, start + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.issued = _write(directory, name, self.cert, self.key)

    def _builder(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        start: dt.datetime,
        end: dt.datetime,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
        )

    def issue(
        self,
        stem: str,
        *common_names: str,
        server: bool = False,
        ended_ago: dt.timedelta | None = None,
        lifetime: dt.timedelta = DAY,
    ) -> Issued:
        """Valid for `lifetime` (a day) from five minutes ago, or ended `ended_ago`; a server
        certificate names 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        if ended_ago is not None:
            start -= ended_ago + lifetime
        builder = self._builder(_name(*common_names), key.public_key(), start, start + lifetime)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return _write(self.directory, stem, cert, key)


def client_context(ca: Issued, own: Issued | None) -> ssl.SSLContext:
    """A kiosk's side: trusts `ca` for the switch, and presents `own` when given."""
    context = ssl.create_default_context(cafile=str(ca.cert))
    if own is not None:
        context.load_cert_chain(own.cert, own.key)
    return context
