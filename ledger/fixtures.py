"""Provisioning from a TOML file: customers, accounts, cards and terminals, upserted.

Reloading is safe: rows are matched by customer id, account number, PAN and terminal id and
updated in place. Money is never reset by a reload: an account's opening balance is posted
(against the house funding account of its currency) only when the account is first created,
so balances always equal the sum of postings.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.errors import FixtureError
from ledger.migrations import Connection
from ledger.model import CUSTOMER_ACCOUNT_TYPES, HOUSE_CUSTOMER_ID
from ledger.pan import luhn_valid, mask_pan, pan_hash


@dataclass(frozen=True, slots=True)
class LoadSummary:
    customers: int
    accounts: int
    cards: int
    terminals: int


def read_fixtures(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FixtureError(f"{path}: {exc}") from exc


def _field(entry: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = entry.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise FixtureError(f"{where}: field {name!r} must be a {kind.__name__}")
    return value


async def _post_opening(
    conn: Connection, account_id: int, amount_minor: int, *, timeout_s: float
) -> None:
    """Posted against the house funding account of the currency, and journalled."""
    await conn.execute(
        "SELECT ledger.post_opening($1, $2, $3)",
        account_id,
        amount_minor,
        datetime.now(UTC),
        timeout=timeout_s,
    )


async def _load_account(
    conn: Connection, customer_id: int, entry: Mapping[str, Any], where: str, timeout_s: float
) -> None:
    number = _field(entry, "number", str, where)
    type_code = _field(entry, "type", str, where)
    currency = _field(entry, "currency", str, where)
    if type_code not in CUSTOMER_ACCOUNT_TYPES:
        raise FixtureError(f"{where}: type must be one of {CUSTOMER_ACCOUNT_TYPES}")
    floor_minor = int(entry.get("floor_minor", 0))
    row = await conn.fetchrow(
        "INSERT INTO ledger.accounts"
        " (customer_id, account_number, type_code, currency, floor_minor)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (account_number) DO UPDATE SET floor_minor = EXCLUDED.floor_minor"
        " WHERE ledger.accounts.customer_id = EXCLUDED.customer_id"
        " RETURNING account_id, (xmax = 0) AS inserted",
        customer_id, number, type_code, currency, floor_minor,
        timeout=timeout_s,
    )  # fmt: skip
    if row is None:
        raise FixtureError(f"{where}: account {number} belongs to another customer")
    opening_minor = int(entry.get("opening_balance_minor", 0))
    if row["inserted"] and opening_minor:
        await _post_opening(conn, row["account_id"], opening_minor, timeout_s=timeout_s)


async def _load_card(
    conn: Connection,
    customer_id: int,
    entry: Mapping[str, Any],
    where: str,
    *,
    pan_hash_key: bytes,
    timeout_s: float,
) -> None:
    pan = _field(entry, "pan", str, where)
    if not luhn_valid(pan) or not mask_pan(pan):
        raise FixtureError(f"{where}: pan is not a Luhn-valid card number")
    where = f"{where} ({mask_pan(pan)})"
    card_id = await conn.fetchval(
        "INSERT INTO ledger.cards (customer_id, pan_hash, pan_masked, expiry_yymm, status,"
        "  pin_data, currency, max_per_txn_minor, daily_amount_minor, daily_count)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10)"
        " ON CONFLICT (pan_hash) DO UPDATE SET expiry_yymm = EXCLUDED.expiry_yymm,"
        "  status = EXCLUDED.status, pin_data = EXCLUDED.pin_data,"
        "  currency = EXCLUDED.currency, max_per_txn_minor = EXCLUDED.max_per_txn_minor,"
        "  daily_amount_minor = EXCLUDED.daily_amount_minor,"
        "  daily_count = EXCLUDED.daily_count, pin_tries = 0"
        " WHERE ledger.cards.customer_id = EXCLUDED.customer_id"
        " RETURNING card_id",
        customer_id, pan_hash(pan, pan_hash_key), mask_pan(pan),
        _field(entry, "expiry", str, where), entry.get("status", "active"),
        json.dumps(dict(entry.get("pin", {}))), _field(entry, "currency", str, where),
        _field(entry, "max_per_txn_minor", int, where),
        _field(entry, "daily_amount_minor", int, where),
        _field(entry, "daily_count", int, where),
        timeout=timeout_s,
    )  # fmt: skip
    if card_id is None:
        raise FixtureError(f"{where}: card belongs to another customer")
    for type_code, number in dict(entry.get("accounts", {})).items():
        linked = await conn.execute(
            "INSERT INTO ledger.card_accounts"
            " SELECT $1, $2, $3, account_id FROM ledger.accounts"
            "  WHERE account_number = $4 AND customer_id = $1 AND type_code = $3"
            " ON CONFLICT (card_id, type_code) DO UPDATE SET account_id = EXCLUDED.account_id",
            customer_id, card_id, type_code, number,
            timeout=timeout_s,
        )  # fmt: skip
        if linked != "INSERT 0 1":
            raise FixtureError(f"{where}: no {type_code} account {number} of this customer")


async def _load_terminal(conn: Connection, entry: Mapping[str, Any], timeout_s: float) -> None:
    terminal_id = _field(entry, "id", str, "terminal")
    where = f"terminal {terminal_id}"
    cash_id = await conn.fetchval(
        "INSERT INTO ledger.accounts (customer_id, account_number, type_code, currency)"
        " VALUES ($1, $2, 'cash', $3)"
        " ON CONFLICT (account_number) DO UPDATE SET currency = ledger.accounts.currency"
        " RETURNING account_id",
        HOUSE_CUSTOMER_ID, f"CASH-{terminal_id}", _field(entry, "currency", str, where),
        timeout=timeout_s,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO ledger.terminals (terminal_id, location, status, tmk, bdk, cash_account_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (terminal_id) DO UPDATE SET location = EXCLUDED.location,"
        "  status = EXCLUDED.status, tmk = EXCLUDED.tmk, bdk = EXCLUDED.bdk",
        terminal_id, _field(entry, "location", str, where), entry.get("status", "active"),
        entry.get("tmk"), entry.get("bdk"), cash_id,
        timeout=timeout_s,
    )  # fmt: skip


async def load_fixtures(
    conn: Connection, data: Mapping[str, Any], *, pan_hash_key: bytes, timeout_ms: int
) -> LoadSummary:
    """Upsert everything in `data` in one transaction (connect as the owner role)."""
    timeout_s = timeout_ms / 1000
    customers = list(data.get("customers", []))
    terminals = list(data.get("terminals", []))
    accounts = cards = 0
    async with conn.transaction():
        for customer in customers:
            customer_id = _field(customer, "id", int, "customer")
            where = f"customer {customer_id}"
            if customer_id <= 0:
                raise FixtureError(f"{where}: id must be positive (0 is the house)")
            await conn.execute(
                "INSERT INTO ledger.customers (customer_id, name) VALUES ($1, $2)"
                " ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name",
                customer_id, _field(customer, "name", str, where),
                timeout=timeout_s,
            )  # fmt: skip
            for account in customer.get("accounts", []):
                await _load_account(conn, customer_id, account, f"{where} account", timeout_s)
                accounts += 1
            for card in customer.get("cards", []):
                await _load_card(
                    conn, customer_id, card, f"{where} card",
                    pan_hash_key=pan_hash_key, timeout_s=timeout_s,
                )  # fmt: skip
                cards += 1
        for terminal in terminals:
            await _load_terminal(conn, terminal, timeout_s)
    return LoadSummary(len(customers), accounts, cards, len(terminals))
