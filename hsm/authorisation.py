"""The HSM's word that a request may move money, as the ledger checks it.

When the HSM verifies a PIN for a request it returns a token: an HMAC-SHA256, truncated to
16 bytes, over the request's identity, its amount and the card (its PAN hash), under the
authorisation key. The ledger holds the same key, where the switch's database role cannot read
it, and refuses a debit whose token does not verify: a stolen switch login without the HSM
cannot move money. The authorisation key is derived from the PAN-hash key inside the HSM, so
it needs no key of its own in the HSM's configuration, and holding it reveals neither PAN
hashes' key nor any PIN key (see docs/security.md).

The token covers the UTF-8 text `kiosk-switch authorisation v1` followed by, one per line,
terminal id, transmission time, STAN, message class, PAN hash (hex), amount in minor units and
currency; the ledger's ledger.authorisation_valid builds the same text.

The same key gives two more words, each with its own first line so that no word stands for
another:
- `kiosk-switch chip authorisation v1`: the same lines and then the ATC (decimal), for a chip
  card's cryptogram the HSM verified (the ARQC covers the amount and the ATC). Without it the
  ledger moves no card's ATC, so a stolen login cannot burn a card's counter.
- `kiosk-switch session keys v1`: terminal id, its TMK, TPK and TAK (each as stored under the
  LMK), for session keys the HSM generated under that terminal's TMK. The ledger stores a
  terminal's session keys only with it, and only for the TMK the terminal was provisioned with,
  so a stolen login cannot copy one terminal's keys onto another.
- `kiosk-switch reversal v1`: terminal id, transmission time, STAN, message class (0420 for an
  0420 and its 0421 repeats), PAN hash (hex), the original's transmission time, STAN and
  message class (F90), the original's amount (F4) and what was dispensed (F95's actual amount;
  0 for a full reversal), for a reversal whose MAC under the terminal's TAK the HSM verified
  over the very bytes it read these from (hsm/reversal.py). The ledger moves a reversal's money
  only with it, and only as much as it says (the original's amount less what was dispensed).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

_KEY_LABEL = b"kiosk-switch authorisation key v1"
TOKEN_BYTES = 16


@dataclass(frozen=True, slots=True)
class Authorisation:
    """What a token vouches for: the request, by its idempotency key, and what it moves."""

    terminal_id: str
    transmission_time: str
    stan: str
    message_class: str
    amount_minor: int
    currency: str

    def message(self, pan_hash: bytes) -> bytes:
        return self._text("kiosk-switch authorisation v1", pan_hash)

    def chip_message(self, pan_hash: bytes, atc: int) -> bytes:
        return self._text("kiosk-switch chip authorisation v1", pan_hash, str(atc))

    def _text(self, label: str, pan_hash: bytes, *more: str) -> bytes:
        fields = (
            label, self.terminal_id, self.transmission_time, self.stan, self.message_class,
            pan_hash.hex(), str(self.amount_minor), self.currency, *more,
        )  # fmt: skip
        return "\n".join(fields).encode()


@dataclass(frozen=True, slots=True)
class ReversalAuthorisation:
    """What a reversal word vouches for, as read from the terminal's MACed reversal."""

    terminal_id: str
    transmission_time: str
    stan: str
    message_class: str
    original_transmission_time: str
    original_stan: str
    original_message_class: str
    original_amount_minor: int
    dispensed_minor: int

    def message(self, pan_hash: bytes) -> bytes:
        fields = (
            "kiosk-switch reversal v1", self.terminal_id, self.transmission_time, self.stan,
            self.message_class, pan_hash.hex(), self.original_transmission_time,
            self.original_stan, self.original_message_class, str(self.original_amount_minor),
            str(self.dispensed_minor),
        )  # fmt: skip
        return "\n".join(fields).encode()


def session_keys_message(terminal_id: str, tmk: str, tpk: str, tak: str) -> bytes:
    """What the session keys' word covers: the keys as stored, under the LMK."""
    return "\n".join(("kiosk-switch session keys v1", terminal_id, tmk, tpk, tak)).encode()


def authorisation_key(pan_hash_key: bytes) -> bytes:
    """The authorisation key derived from the PAN-hash key (one way: it does not reveal it)."""
    return hmac.digest(pan_hash_key, _KEY_LABEL, hashlib.sha256)


def token(key: bytes, message: bytes) -> bytes:
    """The word for `message` (one of the four above)."""
    return hmac.digest(key, message, hashlib.sha256)[:TOKEN_BYTES]


def check_value(key: bytes) -> str:
    """Names the key without revealing it: both sides must show the same one."""
    return hmac.digest(key, bytes(16), hashlib.sha256)[:3].hex().upper()
