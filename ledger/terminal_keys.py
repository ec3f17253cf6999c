"""A terminal's keys as the switch role reaches them: read at sign-on, session keys set after a
key change (ledger.terminal_keys and ledger.set_session_keys)."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.errors import LedgerError
from ledger.migrations import Connection


@dataclass(frozen=True, slots=True)
class TerminalKeys:
    terminal_id: str
    status: str
    tmk: str | None
    bdk: str | None
    tpk: str | None
    tak: str | None


async def read_keys(conn: Connection, terminal_id: str, *, timeout_s: float) -> TerminalKeys | None:
    """The terminal's status and key cryptograms; None for an unknown terminal."""
    row = await conn.fetchrow(
        "SELECT * FROM ledger.terminal_keys($1)", terminal_id, timeout=timeout_s
    )
    return None if row is None else TerminalKeys(**dict(row))


async def set_session_keys(
    conn: Connection,
    terminal_id: str,
    *,
    tpk: str,
    tak: str,
    authorisation: bytes,
    timeout_s: float,
) -> None:
    """Store new session key cryptograms, with the HSM's word that they were generated under
    this terminal's TMK. A terminal's master key is set by provisioning only: the switch's role
    cannot change it."""
    found = await conn.fetchval(
        "SELECT ledger.set_session_keys($1, $2, $3, $4)", terminal_id, tpk, tak, authorisation,
        timeout=timeout_s,
    )  # fmt: skip
    if not found:
        raise LedgerError(f"unknown terminal {terminal_id!r}")
