"""Field 39 response codes the switch answers with (docs/architecture.md, "Wire protocol")."""

from enum import StrEnum


class ResponseCode(StrEnum):
    APPROVED = "00"
    DO_NOT_HONOUR = "05"
    INVALID_TRANSACTION = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD = "14"
    ORIGINAL_NOT_FOUND = "25"
    FORMAT_ERROR = "30"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    INCORRECT_PIN = "55"
    NOT_PERMITTED_TO_CARDHOLDER = "57"
    NOT_PERMITTED_TO_TERMINAL = "58"
    EXCEEDS_AMOUNT_LIMIT = "61"
    RESTRICTED_CARD = "62"
    SECURITY_VIOLATION = "63"  # a chip cryptogram that fails, or a replayed ATC
    EXCEEDS_FREQUENCY_LIMIT = "65"
    PIN_TRIES_EXCEEDED = "75"
    ISSUER_UNAVAILABLE = "91"
    DUPLICATE = "94"
    # The terminal's balancing totals differ from the host's (the 0510 carries the host's).
    RECONCILE_ERROR = "95"
    SYSTEM_MALFUNCTION = "96"
