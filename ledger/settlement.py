"""The settlement report of a closed business day (ledger.settlement_report): per terminal,
the host's totals frozen at close, the totals of its last 0500 for the day, their difference,
the balancing's verdict, and its cassettes at the day's open and close. JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import fields
from datetime import date
from typing import Any

from ledger.balancing import DayFigures
from ledger.migrations import Connection

FIGURES = tuple(f.name for f in fields(DayFigures))


class DayNotClosed(LookupError):
    """The settlement report is of closed days only."""


async def fetch(conn: Connection, business_date: date, *, timeout_s: float) -> dict[str, Any]:
    """The report as a JSON document; raises DayNotClosed for a day not closed."""
    text = await conn.fetchval(
        "SELECT ledger.settlement_report($1)::text", business_date, timeout=timeout_s
    )
    if text is None:
        raise DayNotClosed(f"business day {business_date} is not closed")
    report: dict[str, Any] = json.loads(text)
    return report


def as_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def _cassettes(entries: list[Mapping[str, Any]] | None) -> str:
    """`slot:denomination:loaded:dispensed` per cassette, `;` between them."""
    return ";".join(
        f"{c['cassette_no']}:{c['denomination_minor']}:{c['loaded_notes']}:{c['dispensed_notes']}"
        for c in entries or []
    )


def as_csv(report: Mapping[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["business_date", "terminal_id", "currency", "result", "differences"]
        + [f"host_{name}" for name in FIGURES]
        + [f"terminal_{name}" for name in FIGURES]
        + [f"difference_{name}" for name in FIGURES]
        + ["cassettes_open", "cassettes_close"]
    )
    for entry in report["terminals"]:
        theirs, difference = entry["terminal"] or {}, entry["difference"] or {}
        writer.writerow(
            [report["business_date"], entry["terminal_id"], entry["currency"], entry["result"],
             " ".join(entry["differences"] or [])]
            + [entry["host"][name] for name in FIGURES]
            + [theirs.get(name, "") for name in FIGURES]
            + [difference.get(name, "") for name in FIGURES]
            + [_cassettes(entry["cassettes_open"]), _cassettes(entry["cassettes_close"])]
        )  # fmt: skip
    return out.getvalue()
