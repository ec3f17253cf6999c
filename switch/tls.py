"""TLS for a listener: server certificate, and with a client CA, mutual TLS.

The server accepts each socket itself and runs the handshake with `connect_accepted_socket`, so
a refused handshake is an exception it sees (asyncio and uvloop alike only log it at debug level
when the listener does the handshake). This module holds what is pure about that: the context,
why a handshake was refused, and what the switch uses of a terminal's certificate.

A terminal's certificate names the terminal in its subject's common name (CN), exactly as in
field 41; subject alternative names are not consulted (they name hosts, and a terminal id need
not be a valid host name).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import NameOID

from switch.settings import TlsSettings

SECONDS_PER_DAY = 86_400


class HandshakeFailure(StrEnum):
    """Why a handshake was refused: the `reason` label of the refusal counter and log."""

    UNKNOWN_CA = "unknown_ca"
    EXPIRED = "expired"
    NO_CERTIFICATE = "no_certificate"
    # Anything else: not TLS at all, a TLS version or cipher we refuse, a certificate not yet
    # valid, a handshake cut off or timed out.
    PROTOCOL = "protocol"


# OpenSSL's X509_V_ERR_* codes for a certificate no trusted CA signed: issuer unknown (2, 20,
# 21), self-signed (18, 19), or an issuer name we know on a signature its key did not make (7).
_UNKNOWN_CA_CODES = frozenset({2, 7, 18, 19, 20, 21})
_EXPIRED_CODE = 10
_NO_CERTIFICATE = "PEER_DID_NOT_RETURN_A_CERTIFICATE"


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    reason: HandshakeFailure
    # OpenSSL's own words (e.g. "certificate has expired", "WRONG_VERSION_NUMBER"): no secret.
    detail: str


def handshake_refusal(exc: OSError) -> HandshakeRefusal:
    """Classify what a failed server-side handshake raised."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _UNKNOWN_CA_CODES:
            return HandshakeRefusal(HandshakeFailure.UNKNOWN_CA, exc.verify_message)
        if exc.verify_code == _EXPIRED_CODE:
            return HandshakeRefusal(HandshakeFailure.EXPIRED, exc.verify_message)
        return HandshakeRefusal(HandshakeFailure.PROTOCOL, exc.verify_message)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason == _NO_CERTIFICATE:
            return HandshakeRefusal(HandshakeFailure.NO_CERTIFICATE, reason)
        return HandshakeRefusal(HandshakeFailure.PROTOCOL, reason)
    return HandshakeRefusal(HandshakeFailure.PROTOCOL, str(exc) or type(exc).__name__)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What the switch uses of a terminal's verified certificate."""

    # The subject's CN when there is exactly one; None when there is none or several.
    terminal_id: str | None
    not_valid_after: datetime

    def days_left(self, now: datetime) -> float:
        return (self.not_valid_after - now).total_seconds() / SECONDS_PER_DAY


def peer_certificate(der: bytes) -> PeerCertificate:
    """Read a certificate the handshake already verified (DER, as `getpeercert` gives it)."""
    certificate = x509.load_der_x509_certificate(der)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    terminal_id = names[0].value if len(names) == 1 else None
    return PeerCertificate(
        terminal_id if isinstance(terminal_id, str) else None, certificate.not_valid_after_utc
    )


def server_ssl_context(settings: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.cert_file, settings.key_file)
    if settings.client_ca_file is not None:
        context.load_verify_locations(settings.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
