"""Mutual TLS between the networked HSM and its hosts.

The server requires a client certificate from its client CA, so a host without one never
reaches the command decoder (asyncio completes the handshake before the connection is handed
over). The client checks the HSM's certificate and name against its CA, so a switch never sends
a PIN block to an impostor. TLS 1.2 at least; OpenSSL picks 1.3 when both sides have it. For 1.2,
forward-secret AEAD suites only (1.3 has nothing else).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    client_ca_file: Path
    handshake_timeout_ms: int = 10_000


def _hardened(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    return context


def server_context(tls: ServerTls) -> ssl.SSLContext:
    """Raises ``ssl.SSLError`` or ``OSError`` if a file is missing or does not load."""
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.load_verify_locations(tls.client_ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(*, ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """For ``NetworkHSM(tls=...)``: trusts only ``ca_file`` (the HSMs' CA), checks the HSM's name
    against the address dialled, and presents this host's certificate."""
    context = _hardened(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file)))
    context.load_cert_chain(cert_file, key_file)
    return context
