"""Cash through a running operations app: an operator replenishes a cassette over HTTP (posted
against the vault, journalled, recorded), bad requests change nothing, and the fleet view and
/metrics show each terminal's cash."""

from __future__ import annotations

from typing import Any

from hsm.devkeys import DevKeys
from tests.e2e.conftest import PIN
from tests.ops.conftest import OpsDatabase
from tests.ops.stack import ops_stack
from tests.ops.test_api import call

CASSETTES = [
    {"cassette": 1, "denomination_minor": 5_000, "notes": 1, "low_notes": 0},
    {"cassette": 2, "denomination_minor": 2_000, "notes": 10, "low_notes": 5},
]


async def test_replenishment_and_the_cash_on_the_fleet_view_and_metrics(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with ops_stack(ops_db, dev_keys, terminals=1, cassettes=CASSETTES) as stack:
        terminal_id = stack.world.terminals[0]
        kiosk = await stack.terminal(0)
        assert (
            await kiosk.send(kiosk.withdrawal(stack.world.customers[0].pan, PIN, 5_000))
        ).code == "00"

        async def cash() -> Any:
            stack.operations.reader.expire()
            body = await stack.get("/fleet")
            [entry] = [t for t in body["terminals"] if t["terminal_id"] == terminal_id]
            return body["summary"]["cash"], entry["cash"]

        summary, entry = await cash()
        assert summary == {"ok": 0, "low": 1, "out": 0}
        assert [(c["cassette"], c["remaining"]) for c in entry["cassettes"]] == [(1, 0), (2, 10)]
        metrics: str = await stack.get("/metrics")
        assert f'switch_terminal_cash_level{{terminal_id="{terminal_id}"}} 1.0' in metrics
        assert "switch_terminals_cash_low 1.0" in metrics

        path = f"/terminals/{terminal_id}/cassettes/1/replenish"
        status, body = await call(
            stack, "POST", path, json={"notes": 40, "denomination_minor": 5_000, "by": "olga"}
        )
        assert status == 200
        assert body["replenishment"] == {
            "terminal_id": terminal_id, "cassette": 1, "load": 2, "currency": "EUR",
            "denomination_minor": 5_000, "loaded_notes": 40, "taken_out_remaining": 0,
            "taken_out_rejected": 0, "moved_minor": 200_000,
            "transaction_id": body["replenishment"]["transaction_id"],
        }  # fmt: skip
        summary, entry = await cash()
        assert (summary["ok"], entry["level"]) == (1, "ok")
        for target, payload, expected in [
            (f"/terminals/{terminal_id}/cassettes/3/replenish", {"notes": 5}, 404),
            (path, {"notes": 5, "denomination_minor": 2_000}, 409),
            (path, {"notes": -1}, 400),
            (path, {"notes": "many"}, 400),
            (path, [], 400),
        ]:
            status, body = await call(stack, "POST", target, json=payload)
            assert status == expected, (payload, body)
        rows = await stack.owner.fetch(
            "SELECT replenished_by, loaded_notes FROM ledger.replenishments"
            " WHERE terminal_id = $1 ORDER BY replenishment_id",
            terminal_id,
        )
        assert [tuple(r) for r in rows] == [("fixtures", 1), ("fixtures", 10), ("olga", 40)]
        balance = await stack.owner.fetchval(
            "SELECT balance_minor FROM ledger.accounts WHERE account_number = $1",
            f"CASH-{terminal_id}",
        )
        # Loaded 50 + 200, then 40 x 50 in place of none: minus what the host counts in the ATM.
        assert balance == -(40 * 5_000 + 10 * 2_000)
