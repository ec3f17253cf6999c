"""The double-entry ledger: PostgreSQL through asyncpg, pure decisions, audit journal.

The switch's entry points are re-exported here; see docs/ledger.md.
"""

from ledger.errors import LedgerError, LedgerUnavailable, ProvisioningError, SchemaTooOld
from ledger.model import (
    RESPONSE_CODES,
    AuditFields,
    BalanceInquiry,
    Card,
    Outcome,
    Request,
    RequestKey,
    Result,
    Reversal,
    Transfer,
    Withdrawal,
)
from ledger.rules import check_card
from ledger.settings import LedgerSettings
from ledger.store import LedgerStore, Lookup, open_store
from ledger.terminal_keys import TerminalKeys

__all__ = [
    "RESPONSE_CODES",
    "AuditFields",
    "BalanceInquiry",
    "Card",
    "LedgerError",
    "LedgerSettings",
    "LedgerStore",
    "LedgerUnavailable",
    "Lookup",
    "Outcome",
    "ProvisioningError",
    "Request",
    "RequestKey",
    "Result",
    "Reversal",
    "SchemaTooOld",
    "TerminalKeys",
    "Transfer",
    "Withdrawal",
    "check_card",
    "open_store",
]
