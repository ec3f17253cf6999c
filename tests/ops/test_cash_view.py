"""Cash on the fleet view and /metrics: each terminal's level from its cassettes, the page's
entries and the gauges, exactly. Pure: the snapshot is built here."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ledger.cash import CashLevel, cash_level
from ledger.cassettes import CassetteCounts
from switch.fleet_view import fleet_json
from switch.metrics import cash_gauges
from tests.ops.test_rules import NOW, record, snapshot


def cassette(terminal_id: str, slot: int, remaining: int, low: int = 5) -> CassetteCounts:
    return CassetteCounts(terminal_id, slot, "EUR", 2_000, 50, 50 - remaining, 0, remaining, low)


@pytest.mark.parametrize(
    ("counts", "level"),
    [
        ([], None),
        ([(10, 5), (6, 5)], CashLevel.OK),
        ([(10, 5), (5, 5)], CashLevel.LOW),
        ([(0, 5), (40, 5)], CashLevel.LOW),  # one denomination gone
        ([(0, 5), (0, 0)], CashLevel.OUT),
    ],
)
def test_cash_level(counts: list[tuple[int, int]], level: CashLevel | None) -> None:
    assert cash_level(counts) == level


CASH = [cassette("T1", 1, 10), cassette("T1", 2, 3), cassette("T3", 1, 0)]


def test_the_fleet_view_shows_each_terminals_cash() -> None:
    fleet = snapshot(terminals=[record("T1"), record("T2"), record("T3")], cash=CASH)
    body = fleet_json(
        fleet, now=NOW, process_dead_after=timedelta(seconds=30), window=timedelta(minutes=5),
        readiness={}, stale_reason=None,
    )  # fmt: skip
    summary: dict[str, object] = body["summary"]  # type: ignore[assignment]
    assert summary["cash"] == {"ok": 0, "low": 1, "out": 1}
    terminals: list[dict[str, object]] = body["terminals"]  # type: ignore[assignment]
    cash = {t["terminal_id"]: t["cash"] for t in terminals}
    assert cash["T2"] is None  # no cassettes: the host counts no notes there
    assert cash["T3"] == {
        "level": "out",
        "cassettes": [
            {"cassette": 1, "currency": "EUR", "denomination_minor": 2_000, "loaded": 50,
             "dispensed": 50, "rejected": 0, "remaining": 0, "low_notes": 5},
        ],
    }  # fmt: skip
    assert cash["T1"]["level"] == "low"  # type: ignore[index]


def test_the_cash_gauges() -> None:
    class Source:
        def collect(self) -> object:
            return cash_gauges(CASH)

    registry = CollectorRegistry()
    registry.register(Source())  # type: ignore[arg-type]
    lines = [line for line in generate_latest(registry).decode().splitlines() if line[0] != "#"]
    assert lines == [
        'switch_terminal_cash_notes_remaining{cassette="1",currency="EUR",'
        'denomination_minor="2000",terminal_id="T1"} 10.0',
        'switch_terminal_cash_notes_remaining{cassette="2",currency="EUR",'
        'denomination_minor="2000",terminal_id="T1"} 3.0',
        'switch_terminal_cash_notes_remaining{cassette="1",currency="EUR",'
        'denomination_minor="2000",terminal_id="T3"} 0.0',
        'switch_terminal_cash_level{terminal_id="T1"} 1.0',
        'switch_terminal_cash_level{terminal_id="T3"} 2.0',
        "switch_terminals_cash_low 1.0",
        "switch_terminals_cash_out 1.0",
    ]
