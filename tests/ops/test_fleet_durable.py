"""The fleet view and the alerts come from the ledger's durable terminal events: right with
several switch processes serving one fleet, and after a process stops or a new one starts."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import Any

from hsm.devkeys import DevKeys
from ledger.activity import ProcessInfo
from switch.activity import ActivityRecorder
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


async def test_events_the_ledger_cannot_take_in_time_are_dropped_and_counted(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with ops_stack(
        ops_db, dev_keys, terminals=2, operations={"events_queue_max": 3}
    ) as stack:
        kiosks = stack.world.terminals
        first = await stack.terminal(0)
        await eventually(partial(fleet_says, stack, kiosks, ["up", "never_seen"]))
        await stack.db_proxy.cut()
        await first.client.close()  # its disconnect waits for the ledger
        # Meanwhile a kiosk tries to sign on and is refused (91: the ledger is down), three
        # times: a connect and a disconnect each, about no terminal: the ones to drop.
        for _ in range(3):
            with contextlib.suppress(AssertionError):
                await stack.terminal(1)
            await stack.close_clients()
        recorder = stack.operations.recorder
        await eventually(partial(_at_least, recorder, 4))
        await stack.db_proxy.restore()
        text = await eventually(partial(_metric, stack, "switch_terminal_events_queued 0"))
        # The disconnect was kept: the fleet view is right once the ledger is back.
        await eventually(partial(fleet_says, stack, kiosks, ["down", "never_seen"]))
    assert f"switch_terminal_events_dropped_total {recorder.events_dropped}" in text


async def _at_least(recorder: ActivityRecorder, dropped: int) -> bool:
    return recorder.events_dropped >= dropped


async def _metric(stack: OpsStack, line: str) -> str | None:
    text: str = await stack.get("/metrics")
    return text if line in text else None
