"""Shared test helpers: the development LMK, an injected clock, and the certificates of an HSM,
its hosts and an attacker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsm.crypto import Algorithm
from hsm.keys import DEVELOPMENT_LMK, DEVELOPMENT_PAN_HASH_KEY, KeyRole, Lmk
from hsm.tls import ServerTls
from kiosk_sim.pki import Authority, Issued

LMK = Lmk(DEVELOPMENT_LMK)
# A switch's HSM holds one: PAN hashes and the ledger's words (session keys' too) come from it.
PAN_HASH_KEY = LMK.wrap(KeyRole.PHK, Algorithm.HMAC, DEVELOPMENT_PAN_HASH_KEY)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


@dataclass(frozen=True)
class Pki:
    """P-256 certificates from the hosts' CA (which also signs the HSM's) and from a rogue CA
    that issues under the same names."""

    ca: Issued
    hsm: Issued  # the HSM server, for 127.0.0.1
    switch: Issued  # CN switch-1
    officer: Issued  # CN officer: the admin
    stranger: Issued  # CN stranger: from the CA, but no configured client
    rogue_switch: Issued  # CN switch-1 from the rogue CA
    rogue_hsm: Issued  # an impostor HSM for 127.0.0.1, from the rogue CA

    def server_tls(self) -> ServerTls:
        return ServerTls(self.hsm.cert, self.hsm.key, self.ca.cert, handshake_timeout_ms=2_000)


def make_pki(directory: Path) -> Pki:
    (directory / "ca").mkdir()
    (directory / "rogue").mkdir()
    hosts = Authority(directory / "ca", "hsm-ca")
    rogue = Authority(directory / "rogue", "rogue-ca")
    return Pki(
        ca=hosts.issued,
        hsm=hosts.issue("hsm", "hsm", server=True),
        switch=hosts.issue("switch-1", "switch-1", server=False),
        officer=hosts.issue("officer", "officer", server=False),
        stranger=hosts.issue("stranger", "stranger", server=False),
        rogue_switch=rogue.issue("switch-1", "switch-1", server=False),
        rogue_hsm=rogue.issue("rogue-hsm", "rogue-hsm", server=True),
    )


def der(issued: Issued) -> bytes:
    certificate = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    return certificate.public_bytes(serialization.Encoding.DER)
