"""The fleet view and the alerts come from the ledger's durable terminal events: right with
several switch processes serving one fleet, and after a process stops or a new one starts."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from hsm.devkeys import DevKeys
from ledger.activity import ProcessInfo
from tests.ops.conftest import OpsDatabase
from tests.ops.stack import OpsStack, eventually, now, ops_stack, webhook_receiver


def states(fleet: dict[str, Any], terminals: list[str]) -> list[str]:
    by_id = {row["terminal_id"]: row["state"] for row in fleet["terminals"]}
    return [by_id[terminal] for terminal in terminals]


async def fleet_says(stack: OpsStack, terminals: list[str], expected: list[str]) -> bool:
    return states(await stack.get("/fleet"), terminals) == expected


async def test_two_processes_see_one_fleet_and_raise_each_alert_once(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with webhook_receiver() as receiver:
        first = ops_stack(
            ops_db, dev_keys, terminals=3, receiver=receiver, process=ProcessInfo("a", 1, now())
        )
        async with first as a:
            kiosks = a.world.terminals
            second = ops_stack(
                ops_db, dev_keys, world=a.world, receiver=receiver,
                process=ProcessInfo("b", 2, now()),
            )  # fmt: skip
            async with second as b:
                on_a = await a.terminal(0)
                await b.terminal(1)
                expected = ["up", "up", "never_seen"]
                for stack in (a, b):  # either process shows both, whichever serves which
                    await eventually(partial(fleet_says, stack, kiosks, expected))
                await on_a.client.close()
                await receiver.wait_for("terminal_offline", "firing", kiosks[0])
                await asyncio.sleep(1.0)  # several more rounds in both processes
                assert len(receiver.matching("terminal_offline", "firing", kiosks[0])) == 1
                assert len(await a.alerts(rule="terminal_offline")) == 1
            # Process b stopped cleanly: its terminal's session ended with it.
            await eventually(lambda: fleet_says(a, kiosks, ["down", "down", "never_seen"]))
            offline = await receiver.wait_for("terminal_offline", "firing", kiosks[1])
            assert offline["switch_process"] == a.operations.process.process_id


async def test_a_new_process_shows_the_fleet_as_it_is_from_its_first_read(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with ops_stack(ops_db, dev_keys, terminals=3, process=ProcessInfo("a", 1, now())) as a:
        kiosks = a.world.terminals
        await a.terminal(0)
        await a.terminal(1)
        await eventually(lambda: fleet_says(a, kiosks, ["up", "up", "never_seen"]))
        # A second process (a restart elsewhere, a new worker) knows nothing in memory.
        restarted = ops_stack(ops_db, dev_keys, world=a.world, process=ProcessInfo("b", 2, now()))
        async with restarted as b:
            fleet = await b.get("/fleet")
            assert states(fleet, kiosks) == ["up", "up", "never_seen"]
            assert fleet["summary"]["terminals"] == {
                "up": 2, "down": 0, "never_seen": 1, "out_of_service": 0,
            }  # fmt: skip
            [row] = [t for t in fleet["terminals"] if t["terminal_id"] == kiosks[0]]
            assert row["last_seen_s"] is not None
            assert row["requests_today"] == 2  # its sign-on and key change, on process a
