"""Card-data hygiene: after every flow and every fault, no full PAN, PIN block, track data or
clear key appears in the logs, any ledger table, the metrics or the operations app's answers."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from hsm.devkeys import make_dev_keys
from kiosk_sim import load
from kiosk_sim.epp import Epp
from kiosk_sim.population import LedgerView, build, provision
from kiosk_sim.terminal import Terminal
from switch.access import DEVELOPMENT_KEYS, DEVELOPMENT_TOKENS, Role
from switch.admin import create_admin_app
from switch.app import ledger_figures
from switch.iso8583.elements import KeyChangeData
from switch.logging import configure_logging
from switch.settings import LoggingSettings
from tests.conftest import PgCluster
from tests.e2e.conftest import LMK, PIN, StackFactory

TOKEN = DEVELOPMENT_TOKENS[Role.VIEWER]


class Secrets:
    """Everything secret the kiosks held or sent, as it could appear in text."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: bytes | str) -> None:
        text = value.hex() if isinstance(value, bytes) else value
        self.values |= {text.upper(), text.lower()}

    def found_in(self, text: str) -> list[str]:
        return sorted(v for v in self.values if v in text)


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Secrets:
    """Record every PIN block the kiosks build and every session key their EPPs install."""
    found = Secrets()
    pin = Terminal._pin
    install = Epp.install_session_keys

    def recording_pin(self: Terminal, clear_pin: str, pan: str) -> dict[int, str]:
        fields = pin(self, clear_pin, pan)
        found.add(fields.get(52) or fields[120])
        return fields

    def recording_install(self: Epp, data: KeyChangeData) -> Epp:
        installed = install(self, data)
        for key in (installed.tmk, installed.tpk, installed.tak):
            if key is not None:
                found.add(key)
        return installed

    monkeypatch.setattr(Terminal, "_pin", recording_pin)
    monkeypatch.setattr(Epp, "install_session_keys", recording_install)
    return found


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="debug"), out)
    try:
        yield out
    finally:
        structlog.reset_defaults()


async def dump_ledger(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'ledger' ORDER BY tablename"
        )
        dumps = []
        for row in tables:
            rows = await conn.fetch(
                f"SELECT row_to_json(t)::text AS j FROM ledger.{row['tablename']} t"
            )
            dumps += [r["j"] for r in rows]
    finally:
        await conn.close()
    assert len(dumps) > 100, "the scan must see the tables' contents"
    return "\n".join(dumps)


async def operations_answers(stack: Any) -> str:
    app = create_admin_app(
        DEVELOPMENT_KEYS,
        monitor=stack.monitor,
        stats=stack.server.stats,
        readiness=_ready,
        ledger_figures=lambda: ledger_figures(stack.store),
    )
    async with TestClient(TestServer(app)) as http:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        texts = [
            await (await http.get(path, headers=headers)).text()
            for path in ("/metrics", "/terminals", "/", "/ready")
        ]
    return "\n".join(texts)


async def _ready() -> dict[str, bool]:
    return {"database": True, "hsm": True}


async def test_no_card_data_anywhere_after_every_flow_and_fault(
    make_stack: StackFactory, pg_cluster: PgCluster, secrets: Secrets, json_logs: io.StringIO
) -> None:
    stack = await make_stack(customers=2)
    population = build(seed=21, customers=8, terminals=4)
    await provision(pg_cluster.owner_dsn, population)
    for card in population.cards:
        secrets.add(card.pan)
        secrets.add(card.chip.pan)
        secrets.add(card.chip.profile.icc_mk)  # a chip card's own key
    for sim in population.terminals:
        secrets.add(sim.tmk)
    secrets.add(stack.keys.tmk_clear_hex)
    secrets.add(make_dev_keys(LMK, seed=b"sim 21 bank").imk_ac_clear_hex)
    faults = {"drop": 0.05, "no_read": 0.05, "garbage": 0.05, "slow": 0.05}
    chip = {"chip_withdrawal": 2, "chip_replay": 1, "bad_arqc": 1, "fallback": 1}
    plan = load.Plan(
        terminals=4,
        seed=21,
        mix={**load.DEFAULT_MIX, **chip},
        duration_s=None,
        count=160,
        faults=faults,
        timeout_ms=3_000,
    )
    report = await load.run(
        plan, population, "127.0.0.1", stack.server.port, ledger=LedgerView(pg_cluster.owner_dsn)
    )
    assert report.differences == []

    # Track data and a wrong PIN through the scripted terminal too.
    terminal = await stack.terminal()
    pan = stack.customers[0].pan
    secrets.add(pan)
    track2 = f"{pan}=28121010000000000"
    secrets.add(track2)
    with_track = terminal.financial(
        "0200", {**terminal.withdrawal(pan, PIN, 100).fields, 35: track2}
    )
    await terminal.send(with_track)
    await terminal.send(terminal.withdrawal(pan, "9999", 100))

    assert len(secrets.values) > 50
    assert secrets.found_in(json_logs.getvalue()) == []
    assert secrets.found_in(await dump_ledger(pg_cluster.superuser_dsn)) == []
    answers = await operations_answers(stack)
    assert secrets.found_in(answers) == []
    assert re.search(r"^switch_ledger_writes_total [1-9]", answers, re.MULTILINE)
    assert "message" in json_logs.getvalue()
