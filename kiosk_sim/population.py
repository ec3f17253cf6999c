"""A seeded population of customers, cards and terminals, provisioned through the ledger.

Everything is derived from the seed: PANs, PINs, balances and each terminal's TMK, so two runs
with one seed meet the same world. PIN verification data comes from the HSM (the development
LMK); the terminals' clear TMKs stay with the simulator, as they would in each kiosk's EPP.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from hsm.api import Ibm3624Method
from hsm.devkeys import make_dev_keys
from hsm.keys import DEVELOPMENT_LMK, Lmk
from hsm.local import LocalHSM
from ledger.fixtures import load_fixtures
from ledger.migrations import require_current
from ledger.pan import luhn_complete
from ledger.settings import pan_hash_key_from_env

LMK = Lmk(DEVELOPMENT_LMK)
OPENING_MINOR = 10_000_000  # EUR 100,000.00 per account: load runs decline on limits, not funds
CUSTOMER_ID_BASE = 100_000
CONNECT_WITHIN_S = 60.0


@dataclass(frozen=True, slots=True)
class SimCard:
    pan: str
    pin: str
    customer_id: int
    checking: str  # account numbers
    savings: str


@dataclass(frozen=True, slots=True)
class SimTerminal:
    terminal_id: str
    tmk: bytes


@dataclass(frozen=True, slots=True)
class Population:
    seed: int
    cards: tuple[SimCard, ...]
    terminals: tuple[SimTerminal, ...]

    @property
    def accounts(self) -> tuple[str, ...]:
        """Every account once (cards of one customer share theirs)."""
        return tuple(dict.fromkeys(a for c in self.cards for a in (c.checking, c.savings)))


CUSTOMERS_MAX = 9_999  # ids of one seed stay in their own range of 10,000
CARDS_PER_CUSTOMER_MAX = 10


def build(seed: int, customers: int, terminals: int, cards: int | None = None) -> Population:
    """The population for `seed`; ids are offset by the seed so runs can share a database.

    `cards` (default one per customer): the first card of each customer comes first, then the
    others in turn; a customer's other cards draw on the same accounts (a joint account), and
    the load generator deals them to other kiosks, so one customer is served at two at once.
    """
    rng = random.Random(seed)
    base = CUSTOMER_ID_BASE + (seed % 10_000) * 10_000
    assert 1 <= customers <= CUSTOMERS_MAX, "ids of one seed stay in their own range"
    cards = customers if cards is None else cards
    assert customers <= cards <= CARDS_PER_CUSTOMER_MAX * customers, "cards per customer"
    sim_cards = []
    for n in range(cards):
        customer_id = base + n % customers
        # A customer's k-th card: prefix 49, 48, ... (the first card's PAN is as it always was).
        pan = luhn_complete(f"{49 - n // customers}{customer_id:013d}")
        pin = f"{rng.randrange(10_000):04d}"
        sim_cards.append(
            SimCard(pan, pin, customer_id, f"SIM-{customer_id}-20", f"SIM-{customer_id}-10")
        )
    sims = []
    for n in range(terminals):
        terminal_id = f"S{seed % 1000:03d}{n:04d}"
        keys = make_dev_keys(LMK, seed=f"sim {seed} {terminal_id}".encode())
        sims.append(SimTerminal(terminal_id, bytes.fromhex(keys.tmk_clear_hex)))
    return Population(seed, tuple(sim_cards), tuple(sims))


async def fixtures(population: Population) -> dict[str, Any]:
    """The population in `python -m ledger load`'s format, with real PIN data and TMKs."""
    hsm = LocalHSM(LMK)
    pvk = make_dev_keys(LMK, seed=f"sim {population.seed} bank".encode()).pvk
    customers: dict[int, dict[str, Any]] = {}
    for card in population.cards:
        offset = await hsm.derive_pin_verification_data(pvk, card.pan, card.pin, Ibm3624Method())
        customer = customers.setdefault(
            card.customer_id,
            {
                "id": card.customer_id,
                "name": f"Simulated {card.customer_id}",
                "accounts": [
                    {"number": card.checking, "type": "20", "currency": "EUR",
                     "opening_balance_minor": OPENING_MINOR, "floor_minor": 0},
                    {"number": card.savings, "type": "10", "currency": "EUR",
                     "opening_balance_minor": OPENING_MINOR, "floor_minor": 0},
                ],
                "cards": [],
            },
        )  # fmt: skip
        customer["cards"].append(
            {"pan": card.pan, "expiry": "3012", "status": "active", "currency": "EUR",
             "max_per_txn_minor": 100_000, "daily_amount_minor": 10**12, "daily_count": 10**6,
             "accounts": {"20": card.checking, "10": card.savings},
             "pin": {"method": "ibm3624", "pvk": pvk.to_text(), "offset": offset,
                     "pin_length": 4}}
        )  # fmt: skip
    terminals = []
    for terminal in population.terminals:
        stored = make_dev_keys(LMK, seed=f"sim {population.seed} {terminal.terminal_id}".encode())
        terminals.append(
            {
                "id": terminal.terminal_id,
                "location": "simulated",
                "currency": "EUR",
                "tmk": stored.tmk.to_text(),
            }
        )
    return {"customers": list(customers.values()), "terminals": terminals}


async def provision(owner_dsn: str, population: Population, *, timeout_ms: int = 120_000) -> None:
    """Load the population through the ledger's own provisioning (an idempotent upsert)."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        await require_current(conn, timeout_ms=timeout_ms)  # SchemaTooOld names the fix
        data = await fixtures(population)
        await load_fixtures(conn, data, pan_hash_key=pan_hash_key_from_env(), timeout_ms=timeout_ms)
    finally:
        await conn.close()


class LedgerView:
    """What the simulator may see of the ledger after provisioning: read-only figures."""

    def __init__(self, owner_dsn: str) -> None:
        self._dsn = owner_dsn

    async def _connect(self) -> asyncpg.Connection:
        """Connect, waiting out a database that is restarting (soak runs restart it)."""
        give_up_at = time.monotonic() + CONNECT_WITHIN_S
        while True:
            try:
                return await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.CannotConnectNowError):
                if time.monotonic() > give_up_at:
                    raise
                await asyncio.sleep(0.2)

    async def balances(self, accounts: tuple[str, ...]) -> dict[str, int]:
        conn = await self._connect()
        try:
            rows = await conn.fetch(
                "SELECT account_number, balance_minor FROM ledger.accounts"
                " WHERE account_number = ANY($1::text[])",
                list(accounts),
            )
        finally:
            await conn.close()
        return {row["account_number"]: row["balance_minor"] for row in rows}

    async def unconserved(self) -> dict[str, int]:
        """Currencies whose accounts do not sum to zero. Every posting sums to zero, so every
        currency's accounts (the house's included) must too: money is neither made nor lost."""
        conn = await self._connect()
        try:
            rows = await conn.fetch(
                "SELECT currency, sum(balance_minor)::bigint AS total FROM ledger.accounts"
                " GROUP BY currency HAVING sum(balance_minor) <> 0"
            )
        finally:
            await conn.close()
        return {row["currency"]: row["total"] for row in rows}
