"""Mutual TLS on a listener, with certificates from a CA the test generates."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kiosk_sim.client import SwitchConnectionClosed, TerminalClient, network_request
from switch.iso8583 import Message
from switch.response_codes import ResponseCode
from switch.responses import respond
from switch.server import Link, SwitchServer
from switch.settings import TlsSettings
from tests.switch.conftest import LISTENER

NOW = dt.datetime(2026, 11, 23, 10, 15, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


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
        self.cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.issued = _write(directory, name, self.cert, self.key)

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name if hasattr(self, "name") else subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=1))
        )

    def issue(self, common_name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(common_name), key.public_key())
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return _write(self.directory, common_name, cert, key)


def client_context(ca: Issued, own: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if own is not None:
        context.load_cert_chain(own.cert, own.key)
    return context


class Seen:
    def __init__(self) -> None:
        self.mtis: list[str] = []

    def message(self, _terminal: str | None, mti: str, _response: Message, _ms: float) -> None:
        self.mtis.append(mti)

    def disconnected(self, _terminal: str | None) -> None:
        pass


async def approve(request: Message, _link: Link) -> Message:
    return respond(request, ResponseCode.APPROVED)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    terminals = Authority(tmp_path, "terminal-ca")
    stranger = Authority(tmp_path, "stranger-ca")
    return {
        "ca": terminals.issued,
        "server": terminals.issue("switch", server=True),
        "terminal": terminals.issue("KIOSK001", server=False),
        "stranger": stranger.issue("KIOSK666", server=False),
    }


async def test_mutual_tls_admits_only_terminals_with_a_certificate_from_the_ca(
    pki: dict[str, Issued],
) -> None:
    seen = Seen()
    tls = TlsSettings(
        pki["server"].cert, pki["server"].key, pki["ca"].cert, handshake_timeout_ms=2_000
    )
    server = SwitchServer(replace(LISTENER, tls=tls), approve, observer=seen)
    await server.start()
    try:
        good = await TerminalClient.connect(
            "127.0.0.1", server.port, tls=client_context(pki["ca"], pki["terminal"])
        )
        echo = network_request("301", stan="000001", now=NOW)
        assert (await good.request(echo)).response_code == "00"
        await good.close()
        assert seen.mtis == ["0800"]

        for own in (None, pki["stranger"]):
            with pytest.raises((ssl.SSLError, ConnectionError, SwitchConnectionClosed)):
                await _echo_with(server.port, client_context(pki["ca"], own))
        await asyncio.sleep(0.1)
        assert seen.mtis == ["0800"]
    finally:
        await server.shutdown(1_000)


async def _echo_with(port: int, context: ssl.SSLContext) -> None:
    client = await TerminalClient.connect("127.0.0.1", port, tls=context)
    try:
        # TLS 1.3 reports a refused client certificate on the first read, not the handshake.
        await client.request(network_request("301", stan="000002", now=NOW), timeout_ms=2_000)
    finally:
        await client.close()
