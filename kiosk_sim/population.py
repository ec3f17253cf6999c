"""A seeded population of customers, cards and terminals, provisioned through the ledger.

Everything is derived from the seed: PANs, PINs, balances and each terminal's TMK, so two runs
with one seed meet the same world. PIN verification data comes from the HSM (the development
LMK); the terminals' clear TMKs stay with the simulator, as they would in each kiosk's EPP.

Each card has a chip twin on the same accounts with the same PIN: an EMV card of one of the
cryptogram versions in turn, personalised from the seed's issuer master key (IMK-AC), half of
them allowing fallback to the stripe. The chip cards' counters are state: they live in the
population, shared by every run of it, and `provision` moves them up to what the ledger last
saw, so a population provisioned again goes on where it left off.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from hsm import emv
from hsm.api import Ibm3624Method
from hsm.devkeys import DevKeys, make_dev_keys
from hsm.keys import DEVELOPMENT_LMK, Lmk
from hsm.local import LocalHSM
from kiosk_sim.cash import Cassette, KioskCash
from kiosk_sim.chip import CVNS, ChipCard, ChipProfile
from ledger.fixtures import load_fixtures
from ledger.migrations import require_current
from ledger.pan import luhn_complete, pan_hash
from ledger.settings import pan_hash_key_from_env

LMK = Lmk(DEVELOPMENT_LMK)
OPENING_MINOR = 10_000_000  # EUR 100,000.00 per account: load runs decline on limits, not funds
CUSTOMER_ID_BASE = 100_000
CONNECT_WITHIN_S = 60.0


# Each kiosk's cassettes when the population counts cash (`build(..., cash=True)`): the notes
# the load generator's amounts (20, 50, 100) are made of, enough for long runs.
SIM_CASSETTES: tuple[Cassette, ...] = (
    Cassette(1, 5_000, 5_000),
    Cassette(2, 2_000, 5_000),
    Cassette(3, 1_000, 5_000),
)
SIM_CURRENCY, SIM_CURRENCY_NUMERIC = "EUR", "978"
LOW_NOTES_PER_LOADED = 10  # a cassette is low at a tenth of its load

CHIP_PSN = "01"
CHIP_EXPIRY_YYMM = "3012"
CHIP_SERVICE_CODE = "201"  # international, ICC present; normal authorisation, PIN required


@dataclass(frozen=True, slots=True)
class SimChip:
    """A card's chip twin: its personalisation and whether its profile allows fallback."""

    profile: ChipProfile
    fallback_allowed: bool

    @property
    def pan(self) -> str:
        return self.profile.pan


@dataclass(frozen=True, slots=True)
class SimCard:
    pan: str
    pin: str
    customer_id: int
    checking: str  # account numbers
    savings: str
    chip: SimChip


@dataclass(frozen=True, slots=True)
class SimTerminal:
    terminal_id: str
    tmk: bytes


@dataclass(frozen=True, slots=True)
class Population:
    seed: int
    cards: tuple[SimCard, ...]
    terminals: tuple[SimTerminal, ...]
    # The chip cards by PAN, with their counters: state, shared by every run of the population.
    chips: Mapping[str, ChipCard] = field(default_factory=dict, compare=False)
    # The cassettes each terminal is provisioned with; none: the host counts no notes.
    cassettes: tuple[Cassette, ...] = ()
    # Each kiosk's cash by terminal id, as it counts it (filled in by `provision`): state, like
    # the chips', so the next run of the population goes on from the last one's counters.
    cash: dict[str, KioskCash] = field(default_factory=dict, compare=False)

    @property
    def accounts(self) -> tuple[str, ...]:
        """Every account once (cards of one customer share theirs)."""
        return tuple(dict.fromkeys(a for c in self.cards for a in (c.checking, c.savings)))


CUSTOMERS_MAX = 9_999  # ids of one seed stay in their own range of 10,000
CARDS_PER_CUSTOMER_MAX = 10


def build(
    seed: int, customers: int, terminals: int, cards: int | None = None, *, cash: bool = False
) -> Population:
    """The population for `seed`; ids are offset by the seed so runs can share a database.

    `cash`: every terminal has the cassettes of SIM_CASSETTES, its kiosk dispenses their notes
    and counts them (without: terminals whose notes the host does not count, as before).

    `cards` (default one per customer): the first card of each customer comes first, then the
    others in turn; a customer's other cards draw on the same accounts (a joint account), and
    the load generator deals them to other kiosks, so one customer is served at two at once.
    """
    rng = random.Random(seed)
    imk_ac = bytes.fromhex(_bank_keys(seed).imk_ac_clear_hex)
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
        chip = SimChip(_chip_profile(imk_ac, n, customers, customer_id), n % 2 == 1)
        sim_cards.append(
            SimCard(pan, pin, customer_id, f"SIM-{customer_id}-20", f"SIM-{customer_id}-10", chip)
        )
    sims = []
    for n in range(terminals):
        terminal_id = f"S{seed % 1000:03d}{n:04d}"
        keys = make_dev_keys(LMK, seed=f"sim {seed} {terminal_id}".encode())
        sims.append(SimTerminal(terminal_id, bytes.fromhex(keys.tmk_clear_hex)))
    chips = {card.chip.pan: ChipCard(card.chip.profile) for card in sim_cards}
    cassettes = SIM_CASSETTES if cash else ()
    return Population(seed, tuple(sim_cards), tuple(sims), chips, cassettes)


def _bank_keys(seed: int) -> DevKeys:
    """The seed's issuer keys: its PVK, and its IMK-AC for chip cards."""
    return make_dev_keys(LMK, seed=f"sim {seed} bank".encode())


def _chip_profile(imk_ac: bytes, n: int, customers: int, customer_id: int) -> ChipProfile:
    """Card n's chip twin: the cryptogram versions in turn; Visa's with 17-digit PANs (ICC
    master key option B), Mastercard's with 16, so no chip PAN is a stripe card's."""
    cvn = CVNS[n % len(CVNS)]
    digits = f"{9 - n // customers}{customer_id:013d}"
    visa = emv.cryptogram_version(cvn).scheme is emv.Scheme.VISA
    prefix = f"4{digits}7" if visa else f"5{digits}"
    return ChipProfile.personalise(imk_ac, luhn_complete(prefix), CHIP_PSN, cvn)


async def fixtures(population: Population) -> dict[str, Any]:
    """The population in `python -m ledger load`'s format, with real PIN data and TMKs."""
    hsm = LocalHSM(LMK)
    bank = _bank_keys(population.seed)
    pvk = bank.pvk
    customers: dict[int, dict[str, Any]] = {}
    for card in population.cards:
        offset = await hsm.derive_pin_verification_data(pvk, card.pan, card.pin, Ibm3624Method())
        chip = card.chip
        chip_offset = await hsm.derive_pin_verification_data(
            pvk, chip.pan, card.pin, Ibm3624Method()
        )
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
        customer["cards"].append(
            {"pan": chip.pan, "expiry": CHIP_EXPIRY_YYMM, "status": "active", "currency": "EUR",
             "max_per_txn_minor": 100_000, "daily_amount_minor": 10**12, "daily_count": 10**6,
             "accounts": {"20": card.checking, "10": card.savings},
             "pin": {"method": "ibm3624", "pvk": pvk.to_text(), "offset": chip_offset,
                     "pin_length": 4},
             "emv": {"imk_ac": bank.imk_ac.to_text(), "psn": chip.profile.psn,
                     "scheme": chip.profile.scheme, "cvn": chip.profile.cvn,
                     "fallback_allowed": chip.fallback_allowed}}
        )  # fmt: skip
    terminals = []
    for terminal in population.terminals:
        stored = make_dev_keys(LMK, seed=f"sim {population.seed} {terminal.terminal_id}".encode())
        terminals.append(
            {
                "id": terminal.terminal_id,
                "location": "simulated",
                "currency": SIM_CURRENCY,
                "tmk": stored.tmk.to_text(),
                **_cassette_fixtures(population.cassettes),
            }
        )
    return {"customers": list(customers.values()), "terminals": terminals}


def _cassette_fixtures(cassettes: tuple[Cassette, ...]) -> dict[str, Any]:
    if not cassettes:
        return {}
    return {
        "cassettes": [
            {
                "cassette": c.slot,
                "denomination_minor": c.denomination_minor,
                "notes": c.loaded,
                "low_notes": c.loaded // LOW_NOTES_PER_LOADED,
            }
            for c in cassettes
        ]
    }


async def provision(owner_dsn: str, population: Population, *, timeout_ms: int = 120_000) -> None:
    """Load the population through the ledger's own provisioning (an idempotent upsert)."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        await require_current(conn, timeout_ms=timeout_ms)  # SchemaTooOld names the fix
        data = await fixtures(population)
        key = pan_hash_key_from_env()
        await load_fixtures(conn, data, pan_hash_key=key, timeout_ms=timeout_ms)
        await _resume_counters(conn, population, key, timeout_ms=timeout_ms)
        if population.cassettes:
            await _resume_cash(conn, population, timeout_ms=timeout_ms)
    finally:
        await conn.close()


async def _resume_counters(
    conn: asyncpg.Connection, population: Population, key: bytes, *, timeout_ms: int
) -> None:
    """Each chip card goes on from the last ATC the ledger saw of it (an earlier run's)."""
    hashes = {pan_hash(pan, key): chip for pan, chip in population.chips.items()}
    rows = await conn.fetch(
        "SELECT pan_hash, emv_last_atc FROM ledger.cards"
        " WHERE pan_hash = ANY($1::bytea[]) AND emv_last_atc IS NOT NULL",
        list(hashes),
        timeout=timeout_ms / 1000,
    )
    for row in rows:
        chip = hashes[bytes(row["pan_hash"])]
        chip.last_atc = max(chip.last_atc, row["emv_last_atc"])


async def _resume_cash(
    conn: asyncpg.Connection, population: Population, *, timeout_ms: int
) -> None:
    """A kiosk the population has no counters for yet starts from its cassettes as the ledger
    has them (an earlier run of the same seed may have dispensed from them); one it has keeps
    its own, as a real kiosk's counters are its own."""
    new = [t.terminal_id for t in population.terminals if t.terminal_id not in population.cash]
    rows = await conn.fetch(
        "SELECT terminal_id, cassette_no, denomination_minor, loaded_notes, dispensed_notes,"
        " rejected_notes FROM ledger.cassettes WHERE terminal_id = ANY($1::text[])"
        " ORDER BY terminal_id, cassette_no",
        new,
        timeout=timeout_ms / 1000,
    )
    held: dict[str, list[Cassette]] = {}
    for row in rows:
        held.setdefault(row["terminal_id"], []).append(
            Cassette(
                row["cassette_no"],
                row["denomination_minor"],
                row["loaded_notes"],
                row["dispensed_notes"],
                row["rejected_notes"],
            )
        )
    for terminal_id, cassettes in held.items():
        population.cash[terminal_id] = KioskCash(cassettes, SIM_CURRENCY_NUMERIC)


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
