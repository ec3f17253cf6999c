"""Who may ask the networked HSM for what. Sans-I/O: the server hands in the peer's certificate.

A host is named by its TLS client certificate's subject common name (CN), looked up in the
configured clients; each client has a profile, the set of commands it may run. The CN is what
lets a certificate be renewed without touching the HSM; a client entry may also pin the
certificate's SHA-256 fingerprint, for the clients whose compromise costs most (admin), so that
even a certificate the CA issued by mistake under that CN is not enough. A certificate whose CN
is not configured (or whose fingerprint does not match its pin) connects, and every command it
sends is refused: the operator sees who it was in the log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from hsm import commands as cmd
from hsm.engine import SoftHsm
from hsm.errors import ERRORS_BY_CODE, AccessError, CommandNotPermittedError, HsmError
from hsm.wire import OK, Message

log = structlog.get_logger("hsm.access")

SHA256_LENGTH = 32
# What a switch needs per transaction and at key change; no key import, export or generation,
# no clear-PIN command, no PIN translation.
SWITCH_COMMANDS = frozenset(
    {
        cmd.HEALTH,
        cmd.VERIFY_PIN,
        cmd.VERIFY_PIN_FOR,
        cmd.AUTHORISATION_CHECK,
        cmd.GENERATE_MAC,
        cmd.VERIFY_MAC,
        cmd.REVERSAL_WORD,
        cmd.SESSION_KEYS,
        cmd.CHECK_VALUE,
        cmd.PAN_HASH,
        cmd.VERIFY_ARQC,
        cmd.VERIFY_ARQC_FOR,
    }
)
PROFILES: Mapping[str, frozenset[str]] = {
    "switch": SWITCH_COMMANDS,
    "admin": frozenset(cmd.COMMANDS),
}


@dataclass(frozen=True)
class ClientRule:
    """A configured client: its certificate's CN, its profile, and optionally a pin."""

    cn: str
    profile: str
    sha256: bytes | None = None

    def __post_init__(self) -> None:
        assert self.cn, "a client has a CN"
        assert self.profile in PROFILES, f"profile is one of {sorted(PROFILES)}"
        assert self.sha256 is None or len(self.sha256) == SHA256_LENGTH, "a SHA-256 pin"


@dataclass(frozen=True)
class Client:
    """A connected client: who it is (for the log) and what it may run."""

    name: str
    profile: str
    commands: frozenset[str]
    fingerprint: str = ""  # SHA-256 of the certificate, hex: what a pin would hold


# Without TLS nobody can be told apart, so every connection may run everything: development only
# (the configuration refuses it in production).
UNAUTHENTICATED = Client("(no TLS)", "admin", PROFILES["admin"])


@dataclass(frozen=True)
class AccessPolicy:
    clients: tuple[ClientRule, ...] = ()

    def __post_init__(self) -> None:
        names = [rule.cn for rule in self.clients]
        assert len(names) == len(set(names)), "each client CN is configured once"

    def identify(self, certificate_der: bytes) -> Client:
        """The client a verified certificate (DER) belongs to; unknown clients may run nothing."""
        fingerprint = hashlib.sha256(certificate_der).digest()
        name = _common_name(x509.load_der_x509_certificate(certificate_der))
        rule = next((r for r in self.clients if r.cn == name), None)
        if rule is None or (
            rule.sha256 is not None and not hmac.compare_digest(rule.sha256, fingerprint)
        ):
            return Client(name, "", frozenset(), fingerprint.hex())
        return Client(name, rule.profile, PROFILES[rule.profile], fingerprint.hex())


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return "(no single CN)"  # matches no configured client
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def answer(core: SoftHsm, request: Message, client: Client) -> Message:
    """Run the request if the client's profile enables it. Every refusal is logged with who
    asked and what (the command code and error code; never a field, which may hold keys)."""
    if request.command not in client.commands:
        log.warning(
            "hsm_command_not_permitted",
            client=client.name,
            profile=client.profile or "(none)",
            command=request.command,
        )
        refusal = f"command {request.command} is not enabled for this client"
        return cmd.error_reply(request, CommandNotPermittedError(refusal))
    reply = cmd.execute(core, request)
    if reply.error != OK:
        error = ERRORS_BY_CODE.get(reply.error, HsmError)
        report = log.warning if issubclass(error, AccessError) else log.info
        report(
            "hsm_command_refused", client=client.name, command=request.command, error=reply.error
        )
    return reply
