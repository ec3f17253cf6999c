"""Provisioning from a TOML file: customers, accounts, cards, terminals and their cassettes,
upserted.

Reloading is safe: rows are matched by customer id, account number, PAN and terminal id and
updated in place. Money is never reset by a reload: an account's opening balance is posted
(against the house funding account of its currency) only when the account is first created,
so balances always equal the sum of postings.

Every entry is checked before anything is written. A bad one is a `FixtureError` naming the
file, the line of the entry's `[[table]]` header, the entry (its table and place in it) and the
problem, e.g. `fixtures.toml:42: customer #2, card #1: field 'daily_count' must be an integer,
got a string`.
"""

from __future__ import annotations

import contextlib
import json
import re
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import asyncpg

from ledger.cash import CASSETTES_MAX
from ledger.errors import FixtureError
from ledger.migrations import Connection
from ledger.model import CUSTOMER_ACCOUNT_TYPES, HOUSE_CUSTOMER_ID
from ledger.pan import luhn_valid, mask_pan, pan_hash, stored_mask


@dataclass(frozen=True, slots=True)
class Field:
    kind: type
    required: bool = True


# Each table's fields, as data: a field not listed here is refused (a misspelt optional field
# would otherwise be ignored without a word). A list is an array of tables; a dict a table.
FIELDS: Mapping[str, Mapping[str, Field]] = MappingProxyType(
    {
        "customers": {
            "id": Field(int),
            "name": Field(str),
            "accounts": Field(list, required=False),
            "cards": Field(list, required=False),
        },
        "customers.accounts": {
            "number": Field(str),
            "type": Field(str),
            "currency": Field(str),
            "opening_balance_minor": Field(int, required=False),
            "floor_minor": Field(int, required=False),
        },
        "customers.cards": {
            "pan": Field(str),
            "expiry": Field(str),
            "status": Field(str, required=False),
            "currency": Field(str),
            "max_per_txn_minor": Field(int),
            "daily_amount_minor": Field(int),
            "daily_count": Field(int),
            "accounts": Field(dict, required=False),
            "pin": Field(dict, required=False),
            "emv": Field(dict, required=False),
        },
        "terminals": {
            "id": Field(str),
            "location": Field(str),
            "status": Field(str, required=False),
            "currency": Field(str),
            "tmk": Field(str, required=False),
            "bdk": Field(str, required=False),
            "cassettes": Field(list, required=False),
        },
        # A terminal's cassettes, of its currency: `notes` is the first load (posted against the
        # vault when the cassette is created; a reload never resets counts, replenishment does).
        "terminals.cassettes": {
            "cassette": Field(int),
            "denomination_minor": Field(int),
            "notes": Field(int),
            "low_notes": Field(int, required=False),
        },
    }
)
TOP_LEVEL_TABLES = ("customers", "terminals")
_NOUNS = MappingProxyType(
    {
        "customers": "customer",
        "customers.accounts": "account",
        "customers.cards": "card",
        "terminals": "terminal",
        "terminals.cassettes": "cassette",
    }
)
_EXPECTED = MappingProxyType(
    {int: "an integer", str: "a string", dict: "a table", list: "an array of tables"}
)
# An array-of-tables header line, such as `[[customers.cards]]  # Ada's card`.
_HEADER = re.compile(r"\s*\[\[\s*([\w.\s-]+?)\s*\]\]\s*(?:#.*)?")


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of an array of tables: its table (as its header names it), its 0-based index,
    and for a customer's accounts and cards, the customer's entry."""

    table: str
    index: int
    parent: Entry | None = None

    def __str__(self) -> str:
        own = f"{_NOUNS[self.table]} #{self.index + 1}"
        return own if self.parent is None else f"{self.parent}, {own}"


class EntryError(FixtureError):
    """A bad entry, named by its place in the data; `FixtureFile.locate` adds the file and line."""

    def __init__(self, entry: Entry, problem: str) -> None:
        self.entry = entry
        self.problem = problem
        super().__init__(f"{entry}: {problem}")


@dataclass(frozen=True, slots=True)
class LoadSummary:
    customers: int
    accounts: int
    cards: int
    terminals: int


@dataclass(frozen=True, slots=True)
class FixtureFile:
    """A fixtures file read and checked: its data, and what names an entry's line in it."""

    path: Path
    text: str
    data: Mapping[str, Any]

    def locate(self, error: EntryError) -> FixtureError:
        line = header_line(self.text, self.data, error.entry)
        where = str(self.path) if line is None else f"{self.path}:{line}"
        return FixtureError(f"{where}: {error}")


def read_fixtures(path: Path) -> FixtureFile:
    """Read, parse and check a fixtures file; errors name the file (and the entry's line)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise FixtureError(f"{path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FixtureError(f"{path}: not a TOML file: {exc}") from None
    fixtures = FixtureFile(path, text, data)
    try:
        check_fixtures(data)
    except EntryError as exc:
        raise fixtures.locate(exc) from None
    except FixtureError as exc:
        raise FixtureError(f"{path}: {exc}") from None
    return fixtures


def header_line(text: str, data: Mapping[str, Any], entry: Entry) -> int | None:
    """The line of the entry's `[[table]]` header. tomllib keeps no positions, so the headers
    are counted; None when they do not match the entries one for one (an inline array)."""
    headers = [
        (number, re.sub(r"\s*\.\s*", ".", match[1]))
        for number, line in enumerate(text.splitlines(), 1)
        if (match := _HEADER.fullmatch(line))
    ]
    return _header_line(headers, data, entry)


def _header_line(
    headers: Sequence[tuple[int, str]], data: Mapping[str, Any], entry: Entry
) -> int | None:
    if entry.parent is None:
        span, siblings = headers, data.get(entry.table)
    else:
        start = _header_line(headers, data, entry.parent)
        if start is None:
            return None
        after = [header for header in headers if header[0] > start]
        # The parent's entries end at the next header of the parent's own table.
        end = next((n for n, name in after if name == entry.parent.table), None)
        span = [header for header in after if end is None or header[0] < end]
        siblings = _entry_data(data, entry.parent).get(entry.table.rpartition(".")[2])
    lines = [number for number, name in span if name == entry.table]
    if not isinstance(siblings, list) or len(lines) != len(siblings):
        return None
    return lines[entry.index]


def _entry_data(data: Mapping[str, Any], entry: Entry) -> Mapping[str, Any]:
    container = data if entry.parent is None else _entry_data(data, entry.parent)
    entries: list[Mapping[str, Any]] = container[entry.table.rpartition(".")[2]]
    return entries[entry.index]


def _toml_kind(value: object) -> str:
    if isinstance(value, bool):  # before int: TOML's booleans are Python ints too
        return "a boolean"
    for kind, name in _EXPECTED.items():
        if isinstance(value, kind):
            return "an array" if kind is list else name
    return "a float" if isinstance(value, float) else "a date or time"


def _is_kind(value: object, kind: type) -> bool:
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    return not isinstance(value, list) or all(isinstance(item, dict) for item in value)


def _check_fields(entry: Mapping[str, Any], where: Entry) -> None:
    fields = FIELDS[where.table]
    for name in entry:
        if name not in fields:
            raise EntryError(where, f"unknown field {name!r} (known: {', '.join(fields)})")
    for name, field in fields.items():
        value = entry.get(name)
        if value is None:
            if field.required:
                raise EntryError(where, f"field {name!r} is missing")
        elif not _is_kind(value, field.kind):
            expected = _EXPECTED[field.kind]
            raise EntryError(where, f"field {name!r} must be {expected}, got {_toml_kind(value)}")


def _check_customer(customer: Mapping[str, Any], where: Entry) -> None:
    if customer["id"] <= 0:
        raise EntryError(where, "field 'id' must be positive (0 is the house)")


def _check_account(account: Mapping[str, Any], where: Entry) -> None:
    if account["type"] not in CUSTOMER_ACCOUNT_TYPES:
        raise EntryError(
            where,
            f"field 'type' must be one of {', '.join(CUSTOMER_ACCOUNT_TYPES)},"
            f" got {account['type']!r}",
        )


def _check_card(card: Mapping[str, Any], where: Entry) -> None:
    # The PAN itself is never repeated in a message.
    if not luhn_valid(card["pan"]) or not stored_mask(card["pan"]):
        raise EntryError(where, "field 'pan' is not a Luhn-valid card number")
    for type_code, number in card.get("accounts", {}).items():
        if type_code not in CUSTOMER_ACCOUNT_TYPES or not isinstance(number, str):
            raise EntryError(
                where,
                "field 'accounts' maps account types"
                f" ({', '.join(CUSTOMER_ACCOUNT_TYPES)}) to account numbers,"
                f" got {type_code!r} = {_toml_kind(number)}",
            )
    if "emv" in card:
        _check_emv(card["emv"], where)


# A chip card's EMV profile: field, its TOML kind, and whether it is required.
EMV_FIELDS: Mapping[str, tuple[type, bool]] = MappingProxyType(
    {
        "imk_ac": (str, True),
        "psn": (str, True),
        "scheme": (str, True),
        "cvn": (int, False),
        "fallback_allowed": (bool, False),
    }
)
EMV_SCHEMES = ("visa", "mastercard")
_PSN = re.compile(r"[0-9]{2}")
_CVN_RANGE = range(1, 256)


def _check_emv(emv: Mapping[str, Any], where: Entry) -> None:
    """The EMV profile table of a card: the IMK-AC key block (under the LMK), the PAN sequence
    number, the scheme, and optionally the cryptogram version and whether fallback is allowed."""
    for name, value in emv.items():
        if name not in EMV_FIELDS:
            known = ", ".join(EMV_FIELDS)
            raise EntryError(where, f"unknown field 'emv.{name}' (known: {known})")
        kind, _ = EMV_FIELDS[name]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            expected = "a boolean" if kind is bool else _EXPECTED[kind]
            raise EntryError(where, f"field 'emv.{name}' must be {expected}")
    missing = [name for name, (_, required) in EMV_FIELDS.items() if required and name not in emv]
    if missing:
        raise EntryError(where, f"field 'emv.{missing[0]}' is missing")
    if not _PSN.fullmatch(emv["psn"]):
        raise EntryError(where, "field 'emv.psn' must be two digits ('00' when the card has none)")
    if emv["scheme"] not in EMV_SCHEMES:
        raise EntryError(where, f"field 'emv.scheme' must be one of {', '.join(EMV_SCHEMES)}")
    if "cvn" in emv and emv["cvn"] not in _CVN_RANGE:
        raise EntryError(where, "field 'emv.cvn' must be a cryptogram version from 1 to 255")


def _check_terminal(terminal: Mapping[str, Any], where: Entry) -> None:
    slots = [cassette.get("cassette") for cassette in terminal.get("cassettes", [])]
    repeated = next((slot for slot in slots if slots.count(slot) > 1), None)
    if repeated is not None:
        raise EntryError(where, f"cassette {repeated} is listed twice")


def _check_cassette(cassette: Mapping[str, Any], where: Entry) -> None:
    if not 1 <= cassette["cassette"] <= CASSETTES_MAX:
        raise EntryError(where, f"field 'cassette' must be a slot from 1 to {CASSETTES_MAX}")
    if cassette["denomination_minor"] <= 0:
        raise EntryError(where, "field 'denomination_minor' must be positive")
    for name in ("notes", "low_notes"):
        if cassette.get(name, 0) < 0:
            raise EntryError(where, f"field {name!r} must not be negative")


_CHECKS: Mapping[str, Callable[[Mapping[str, Any], Entry], None]] = MappingProxyType(
    {
        "customers": _check_customer,
        "customers.accounts": _check_account,
        "customers.cards": _check_card,
        "terminals": _check_terminal,
        "terminals.cassettes": _check_cassette,
    }
)


def _check_entry(entry: Mapping[str, Any], where: Entry) -> None:
    _check_fields(entry, where)
    _CHECKS[where.table](entry, where)


def check_fixtures(data: Mapping[str, Any]) -> None:
    """Every table and entry well-formed, before anything is written: raises `EntryError` for
    the first bad entry, `FixtureError` for a file laid out wrongly."""
    unknown = sorted(set(data) - set(TOP_LEVEL_TABLES))
    if unknown:
        known = ", ".join(f"[[{table}]]" for table in TOP_LEVEL_TABLES)
        raise FixtureError(f"unknown table {unknown[0]!r} (known: {known})")
    for table in TOP_LEVEL_TABLES:
        entries = data.get(table, [])
        if not _is_kind(entries, list):
            raise FixtureError(f"{table!r} must be an array of tables ([[{table}]])")
        for index, entry in enumerate(entries):
            where = Entry(table, index)
            _check_entry(entry, where)
            for name, field in FIELDS[table].items():
                if field.kind is list:
                    for sub_index, sub_entry in enumerate(entry.get(name, [])):
                        _check_entry(sub_entry, Entry(f"{table}.{name}", sub_index, where))


@contextlib.asynccontextmanager
async def _refusals_named(where: Entry) -> AsyncIterator[None]:
    """A statement the database refuses (a check constraint, a value too long) names the entry."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise EntryError(where, f"refused by the database: {exc}") from exc


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
    conn: Connection, customer_id: int, entry: Mapping[str, Any], where: Entry, timeout_s: float
) -> None:
    number, currency = entry["number"], entry["currency"]
    row = await conn.fetchrow(
        "INSERT INTO ledger.accounts"
        " (customer_id, account_number, type_code, currency, floor_minor)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (account_number) DO UPDATE SET floor_minor = EXCLUDED.floor_minor"
        " WHERE ledger.accounts.customer_id = EXCLUDED.customer_id"
        " RETURNING account_id, (xmax = 0) AS inserted",
        customer_id, number, entry["type"], currency, entry.get("floor_minor", 0),
        timeout=timeout_s,
    )  # fmt: skip
    if row is None:
        raise EntryError(where, f"account {number} belongs to another customer")
    opening_minor = entry.get("opening_balance_minor", 0)
    if row["inserted"] and opening_minor:
        await _post_opening(conn, row["account_id"], opening_minor, timeout_s=timeout_s)


async def _load_card(
    conn: Connection,
    customer_id: int,
    entry: Mapping[str, Any],
    where: Entry,
    *,
    pan_hash_key: bytes,
    timeout_s: float,
) -> None:
    pan = entry["pan"]
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
        customer_id, pan_hash(pan, pan_hash_key), stored_mask(pan), entry["expiry"],
        entry.get("status", "active"), json.dumps(entry.get("pin", {})), entry["currency"],
        entry["max_per_txn_minor"], entry["daily_amount_minor"], entry["daily_count"],
        timeout=timeout_s,
    )  # fmt: skip
    if card_id is None:
        raise EntryError(where, f"card {mask_pan(pan)} belongs to another customer")
    await _load_emv_profile(conn, card_id, entry.get("emv"), timeout_s=timeout_s)
    for type_code, number in entry.get("accounts", {}).items():
        linked = await conn.execute(
            "INSERT INTO ledger.card_accounts"
            " SELECT $1, $2, $3, account_id FROM ledger.accounts"
            "  WHERE account_number = $4 AND customer_id = $1 AND type_code = $3"
            " ON CONFLICT (card_id, type_code) DO UPDATE SET account_id = EXCLUDED.account_id",
            customer_id, card_id, type_code, number,
            timeout=timeout_s,
        )  # fmt: skip
        if linked != "INSERT 0 1":
            raise EntryError(where, f"no {type_code} account {number} of this customer")


async def _load_emv_profile(
    conn: Connection, card_id: int, emv: Mapping[str, Any] | None, *, timeout_s: float
) -> None:
    """The card's EMV profile as the file says (none: not a chip card). Its last ATC is kept:
    a reload that reset it would let every old cryptogram of the card be replayed."""
    profile = emv or {}
    await conn.execute(
        "UPDATE ledger.cards SET emv_imk_ac = $2, emv_psn = $3, emv_scheme = $4, emv_cvn = $5,"
        "  emv_fallback_allowed = $6"
        " WHERE card_id = $1",
        card_id, profile.get("imk_ac"), profile.get("psn"), profile.get("scheme"),
        profile.get("cvn"), profile.get("fallback_allowed", False),
        timeout=timeout_s,
    )  # fmt: skip


async def _load_terminal(conn: Connection, entry: Mapping[str, Any], timeout_s: float) -> None:
    terminal_id = entry["id"]
    cash_id = await conn.fetchval(
        "INSERT INTO ledger.accounts (customer_id, account_number, type_code, currency)"
        " VALUES ($1, $2, 'cash', $3)"
        " ON CONFLICT (account_number) DO UPDATE SET currency = ledger.accounts.currency"
        " RETURNING account_id",
        HOUSE_CUSTOMER_ID, f"CASH-{terminal_id}", entry["currency"],
        timeout=timeout_s,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO ledger.terminals (terminal_id, location, status, tmk, bdk, cash_account_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (terminal_id) DO UPDATE SET location = EXCLUDED.location,"
        "  status = EXCLUDED.status, tmk = EXCLUDED.tmk, bdk = EXCLUDED.bdk",
        terminal_id, entry["location"], entry.get("status", "active"),
        entry.get("tmk"), entry.get("bdk"), cash_id,
        timeout=timeout_s,
    )  # fmt: skip


async def _load_cassette(
    conn: Connection, terminal: Mapping[str, Any], entry: Mapping[str, Any], where: Entry,
    timeout_s: float,
) -> None:  # fmt: skip
    """Created with its first load (posted, journalled and recorded as a replenishment); a
    reload changes its low mark only: counts change by dispensing and replenishing."""
    terminal_id, slot = terminal["id"], entry["cassette"]
    existing = await conn.fetchrow(
        "SELECT currency, denomination_minor FROM ledger.cassettes"
        " WHERE terminal_id = $1 AND cassette_no = $2",
        terminal_id, slot,
        timeout=timeout_s,
    )  # fmt: skip
    wanted = (terminal["currency"], entry["denomination_minor"])
    if existing is not None and (existing["currency"], existing["denomination_minor"]) != wanted:
        raise EntryError(
            where,
            f"cassette {slot} holds {existing['currency']} notes of"
            f" {existing['denomination_minor']}, not {wanted[0]} notes of {wanted[1]}",
        )
    await conn.execute(
        "INSERT INTO ledger.cassettes (terminal_id, cassette_no, currency, denomination_minor,"
        "  loaded_notes, low_notes) VALUES ($1, $2, $3, $4, 0, $5)"
        " ON CONFLICT (terminal_id, cassette_no) DO UPDATE SET low_notes = EXCLUDED.low_notes",
        terminal_id, slot, terminal["currency"], entry["denomination_minor"],
        entry.get("low_notes", 0),
        timeout=timeout_s,
    )  # fmt: skip
    if existing is None:
        await conn.execute(
            "SELECT ledger.replenish_cassette($1, $2, $3, NULL, $4, 'fixtures')",
            terminal_id, slot, entry["notes"], datetime.now(UTC),
            timeout=timeout_s,
        )  # fmt: skip


async def _load_customer(
    conn: Connection, customer: Mapping[str, Any], where: Entry, *, pan_hash_key: bytes,
    timeout_s: float,
) -> None:  # fmt: skip
    customer_id = customer["id"]
    async with _refusals_named(where):
        await conn.execute(
            "INSERT INTO ledger.customers (customer_id, name) VALUES ($1, $2)"
            " ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name",
            customer_id, customer["name"],
            timeout=timeout_s,
        )  # fmt: skip
    for index, account in enumerate(customer.get("accounts", [])):
        account_where = Entry("customers.accounts", index, where)
        async with _refusals_named(account_where):
            await _load_account(conn, customer_id, account, account_where, timeout_s)
    for index, card in enumerate(customer.get("cards", [])):
        card_where = Entry("customers.cards", index, where)
        async with _refusals_named(card_where):
            await _load_card(
                conn, customer_id, card, card_where, pan_hash_key=pan_hash_key, timeout_s=timeout_s
            )


async def load_fixtures(
    conn: Connection, data: Mapping[str, Any], *, pan_hash_key: bytes, timeout_ms: int
) -> LoadSummary:
    """Check `data`, then upsert all of it in one transaction (connect as the owner role).
    A bad entry raises `EntryError` and nothing is written."""
    check_fixtures(data)
    timeout_s = timeout_ms / 1000
    customers = data.get("customers", [])
    terminals = data.get("terminals", [])
    async with conn.transaction():
        for index, customer in enumerate(customers):
            await _load_customer(
                conn, customer, Entry("customers", index),
                pan_hash_key=pan_hash_key, timeout_s=timeout_s,
            )  # fmt: skip
        for index, terminal in enumerate(terminals):
            where = Entry("terminals", index)
            async with _refusals_named(where):
                await _load_terminal(conn, terminal, timeout_s)
            for slot_index, cassette in enumerate(terminal.get("cassettes", [])):
                cassette_where = Entry("terminals.cassettes", slot_index, where)
                async with _refusals_named(cassette_where):
                    await _load_cassette(conn, terminal, cassette, cassette_where, timeout_s)
    return LoadSummary(
        len(customers),
        sum(len(customer.get("accounts", [])) for customer in customers),
        sum(len(customer.get("cards", [])) for customer in customers),
        len(terminals),
    )
