"""Fresh customers, cards and terminals per test, loaded through the provisioning code."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ledger.fixtures import load_fixtures
from ledger.migrations import Connection
from ledger.model import AuditFields, RequestKey
from ledger.pan import luhn_complete
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
AUDIT = AuditFields(mti="0200", processing_code="011000", rrn="000000000001")
_ids = itertools.count(1_000)
_stans = itertools.count(1)


def next_id() -> int:
    return next(_ids)


def key(terminal_id: str, message_class: str = "0200") -> RequestKey:
    stan = next(_stans)
    return RequestKey(terminal_id, f"1123{stan:06d}", f"{stan % 1_000_000:06d}", message_class)


@dataclass(frozen=True)
class Customer:
    customer_id: int
    pan: str
    checking: str  # account numbers
    savings: str


@dataclass
class World:
    """Customers (each one card linked to checking 20 and savings 10) and terminals."""

    currency: str = "EUR"
    customers: list[Customer] = field(default_factory=list)
    terminals: list[str] = field(default_factory=list)

    def fixtures(
        self,
        customers: int,
        terminals: int = 1,
        *,
        balance_minor: int = 100_000,
        floor_minor: int = 0,
        card: dict[str, Any] | None = None,
        cassettes: list[dict[str, int]] | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"customers": [], "terminals": []}
        for _ in range(customers):
            customer_id = next_id()
            pan = luhn_complete(f"400000{customer_id:09d}")
            entry = Customer(customer_id, pan, f"CHK-{customer_id}", f"SAV-{customer_id}")
            self.customers.append(entry)
            data["customers"].append(
                {
                    "id": customer_id,
                    "name": f"Customer {customer_id}",
                    "accounts": [
                        {"number": entry.checking, "type": "20", "currency": self.currency,
                         "opening_balance_minor": balance_minor, "floor_minor": floor_minor},
                        {"number": entry.savings, "type": "10", "currency": self.currency,
                         "opening_balance_minor": balance_minor},
                    ],
                    "cards": [
                        {"pan": pan, "expiry": "2812", "currency": self.currency,
                         "max_per_txn_minor": 50_000, "daily_amount_minor": 100_000,
                         "daily_count": 5, "pin": {"pvv": "0000", "pvk": "PVK-PLACEHOLDER"},
                         "accounts": {"20": entry.checking, "10": entry.savings}}
                        | (card or {}),
                    ],
                }
            )  # fmt: skip
        for _ in range(terminals):
            terminal_id = f"T{next_id():07d}"
            self.terminals.append(terminal_id)
            data["terminals"].append(
                # Each terminal's own TMK (a placeholder: these tests never open it).
                {
                    "id": terminal_id,
                    "location": "test",
                    "currency": self.currency,
                    "tmk": f"TMK-{terminal_id}",
                }
            )
        if cassettes:
            for entry in data["terminals"]:
                entry["cassettes"] = cassettes
        return data

    async def load(self, conn: Connection, customers: int, terminals: int = 1, **kw: Any) -> None:
        data = self.fixtures(customers, terminals, **kw)
        await load_fixtures(conn, data, pan_hash_key=DEVELOPMENT_PAN_HASH_KEY, timeout_ms=30_000)
