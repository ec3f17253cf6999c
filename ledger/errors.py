"""Typed failures of the ledger. Business declines are never exceptions: they are outcomes."""

from __future__ import annotations


class LedgerError(Exception):
    """The ledger could not complete a request; nothing was posted."""


class LedgerUnavailable(LedgerError):
    """The database could not be reached or did not answer in time (response code 91)."""


class SchemaTooOld(LedgerError):
    """The database schema is older than this code; run `python -m ledger migrate`."""

    def __init__(self, applied: int, required: int, *, problem: str | None = None) -> None:
        self.applied = applied
        self.required = required
        if problem is not None:
            self.problem = problem
            super().__init__(problem)
            return
        self.problem = (
            f"schema version {applied} is older than {required}"
            if applied < required
            else "the schema's functions differ from this code's"
        )
        super().__init__(f"{self.problem}: run `python -m ledger migrate`")


class ProvisioningError(LedgerError):
    """The private PostgreSQL cluster could not be created, started or stopped."""


class FixtureError(LedgerError):
    """A fixtures file is malformed; the message names the file, the entry (its table, its
    place in it and, when the file writes it as a `[[table]]` header, its line) and the field."""


class BackupError(LedgerError):
    """A backup or a restore could not be made; the message names what is wrong and, for a
    restore, the target directory is left as it was."""


class BalancingRefused(LedgerError):
    """An 0500 the ledger refused, writing nothing; `reason` names why (a closed day, a day not
    begun, counters that cannot be, another currency)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class DayClosed(LedgerError):
    """A posting dated on a business day that is closed; nothing was posted."""


class DayNotOver(LedgerError):
    """A business day cannot be closed before the next one has begun."""
