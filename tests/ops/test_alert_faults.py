"""Each alert rule driven end to end by a real fault: it fires, notifies a local webhook
receiver, is kept in the ledger, and resolves when the fault is gone."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from hsm.devkeys import DevKeys
from kiosk_sim.chip import ChipCard, ChipProfile
from kiosk_sim.pki import Authority, client_context
from kiosk_sim.terminal import Terminal
from ledger.balancing import CassetteCounter, DayFigures
from switch.iso8583 import Message
from switch.settings import TlsSettings
from tests.e2e.conftest import PIN, load_world
from tests.e2e.test_balancing import CASSETTES, balancing_request
from tests.e2e.test_chip import PSN, emv_profile
from tests.ops.conftest import OpsDatabase
from tests.ops.stack import AUTH, OpsStack, eventually, ops_stack, webhook_receiver
from tests.ops.test_api import call

CVN = 10


async def send_all(terminal: Terminal, requests: list[Message]) -> list[str]:
    """Pipelined on one connection, so a slow dependency costs the test one deadline."""
    exchanges = await asyncio.gather(*(terminal.send(request) for request in requests))
    return [exchange.code for exchange in exchanges]


async def withdraw_all(terminal: Terminal, pan: str, amounts: list[int]) -> list[str]:
    return await send_all(terminal, [terminal.withdrawal(pan, PIN, a) for a in amounts])


async def inquire(terminal: Terminal, pan: str, count: int) -> list[str]:
    """Balance inquiries: three HSM calls each (MAC, PIN, response MAC), no daily limit."""
    return await send_all(terminal, [terminal.balance_inquiry(pan, PIN) for _ in range(count)])


def counted(summary: str) -> tuple[int, int]:
    """The "N of M" of an alert's summary."""
    found = re.search(r"(\d+) of (\d+)", summary)
    assert found is not None, summary
    return int(found[1]), int(found[2])


async def test_a_killed_kiosk_raises_terminal_offline_until_it_signs_on_again(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, receiver=receiver) as stack,
    ):
        terminal = await stack.terminal(0)
        kiosk = terminal.terminal_id
        await terminal.client.close()  # the kiosk dies: no sign-off
        fired = await receiver.wait_for("terminal_offline", "firing", kiosk)
        assert fired["alert"]["terminal_id"] == kiosk
        assert fired["switch_process"] == stack.operations.process.process_id
        [alert] = await stack.alerts(rule="terminal_offline", subject=kiosk)
        assert alert["state"] == "firing"
        fleet = await stack.get("/fleet")
        [row] = [t for t in fleet["terminals"] if t["terminal_id"] == kiosk]
        assert (row["state"], row["alerts"]) == ("down", [alert["alert_id"]])
        await stack.terminal(0)  # it comes back
        resolved = await receiver.wait_for("terminal_offline", "resolved", kiosk)
        assert resolved["alert"]["alert_id"] == alert["alert_id"]
        [alert] = await stack.alerts(rule="terminal_offline", subject=kiosk)
        assert alert["state"] == "resolved"
        assert alert["resolved_at"] > alert["raised_at"]
        # The other terminal was never seen: never an offline alert.
        assert not receiver.matching("terminal_offline", "firing", stack.world.terminals[1])


async def test_a_blackholed_hsm_raises_hsm_unreachable_and_the_91_ratio_then_both_resolve(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, receiver=receiver) as stack,
    ):
        terminal = await stack.terminal(0)
        pan = stack.world.customers[0].pan
        assert await inquire(terminal, pan, 2) == ["00", "00"]
        stack.hsm_proxy.blackhole()
        assert await inquire(terminal, pan, 6) == ["91"] * 6
        process = stack.operations.process.process_id
        hsm = await receiver.wait_for("hsm_unreachable", "firing", process)
        assert hsm["alert"]["severity"] == "critical"
        ratio = await receiver.wait_for("unavailable_ratio", "firing", "fleet")
        unavailable, financial = counted(ratio["alert"]["summary"])
        assert unavailable == 6
        assert financial in (6, 7, 8)  # the approved ones may have left the window
        metrics = await stack.get("/metrics")
        assert "switch_hsm_up 0" in metrics
        await stack.hsm_proxy.heal()
        await receiver.wait_for("hsm_unreachable", "resolved", process)
        await receiver.wait_for("unavailable_ratio", "resolved", "fleet")
        # The process's own alert reached the ledger too, raised and resolved.
        [kept] = await stack.alerts(rule="hsm_unreachable")
        assert (kept["subject"], kept["state"]) == (process, "resolved")
        assert "switch_hsm_up 1" in await stack.get("/metrics")


async def test_injected_declines_raise_a_decline_spike_that_resolves_when_they_stop(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, receiver=receiver) as stack,
    ):
        terminal = await stack.terminal(0)
        pan = stack.world.customers[0].pan
        # Over the card's per-transaction limit: declined 61 on their merits.
        codes = await withdraw_all(terminal, pan, [100] + [60_000] * 6)
        assert codes == ["00"] + ["61"] * 6
        fired = await receiver.wait_for("decline_rate_spike", "firing", terminal.terminal_id)
        declined, financial = counted(fired["alert"]["summary"])
        assert financial >= 5  # [alerts] requests_min: it fires as soon as the ratio says so
        assert declined / financial >= 0.5
        assert "no baseline yet" in fired["alert"]["summary"]
        assert not receiver.matching("unavailable_ratio", "firing")  # declines are not outages
        # Once the window has passed without them, it resolves.
        await receiver.wait_for("decline_rate_spike", "resolved", terminal.terminal_id)


async def test_a_slow_hsm_raises_latency_p99_over_the_slo(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, receiver=receiver) as stack,
    ):
        terminal = await stack.terminal(0)
        pan = stack.world.customers[0].pan
        stack.hsm_proxy.delay_s = 0.1  # three HSM calls a withdrawal, each way delayed
        assert await inquire(terminal, pan, 6) == ["00"] * 6
        fired = await receiver.wait_for("latency_p99_over_slo", "firing", "fleet")
        assert "over the 300 ms SLO" in fired["alert"]["summary"]
        stack.hsm_proxy.delay_s = 0
        await receiver.wait_for("latency_p99_over_slo", "resolved", "fleet")


async def test_an_unreachable_database_is_notified_at_once_and_kept_once_it_is_back(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, receiver=receiver) as stack,
    ):
        terminal = await stack.terminal(0)
        process = stack.operations.process.process_id
        await stack.get("/fleet")  # a snapshot was read while the ledger was up
        await stack.db_proxy.cut()
        # Notified while the ledger is down: the process keeps its own dependency alerts.
        fired = await receiver.wait_for("database_unreachable", "firing", process)
        assert fired["alert"]["alert_id"] is None
        fleet = await stack.get("/fleet")  # the last snapshot, said to be stale
        assert fleet["stale"].startswith("the ledger cannot be read")
        assert fleet["summary"]["checks"]["database"] is False
        await stack.db_proxy.restore()
        await receiver.wait_for("database_unreachable", "resolved", process)
        [kept] = await eventually(lambda: stack.alerts(rule="database_unreachable"))
        assert (kept["subject"], kept["state"]) == (process, "resolved")
        assert kept["raised_at"].timestamp() == _seconds(fired["alert"]["raised_at"])
        # The switch serves again, and so does the fleet view.
        pan = stack.world.customers[0].pan
        answer = await eventually(lambda: _approved(terminal, pan))
        assert answer
        assert (await stack.get("/fleet"))["stale"] is None


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def _approved(terminal: Terminal, pan: str) -> bool:
    return (await terminal.send(terminal.withdrawal(pan, PIN, 100))).code == "00"


async def test_a_tampered_journal_raises_audit_verify_failing_until_it_verifies_again(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, receiver=receiver, audit_dsn=ops_db.owner_dsn) as stack,
    ):
        checker = stack.operations.checker
        assert checker is not None
        assert checker.request()
        first = await checker.wait()
        assert first is not None
        assert first.outcome == "ok"
        terminal = await stack.terminal(0)
        assert await withdraw_all(terminal, stack.world.customers[0].pan, [700]) == ["00"]
        superuser = await asyncpg.connect(ops_db.superuser_dsn)
        tamper = (
            "ALTER TABLE ledger.transactions DISABLE TRIGGER no_update_delete;"
            "UPDATE ledger.transactions SET amount_minor = amount_minor {} 1"
            " WHERE kind = 'withdrawal';"
            "ALTER TABLE ledger.transactions ENABLE TRIGGER no_update_delete;"
        )
        try:
            await superuser.execute(tamper.format("+"))
            async with (
                aiohttp.ClientSession(headers=AUTH) as http,
                http.post(stack.admin_url + "/alerts/audit-verify") as reply,
            ):
                assert reply.status == 202
            fired = await receiver.wait_for("audit_verify_failing", "firing", "journal")
            assert "found damage" in fired["alert"]["summary"]
            await superuser.execute(tamper.format("-"))
        finally:
            await superuser.close()
        started = time.monotonic()
        assert await eventually(lambda: _request_check(stack))
        await receiver.wait_for("audit_verify_failing", "resolved", "journal")
        assert time.monotonic() - started < 30


async def _request_check(stack: OpsStack) -> bool:
    checker = stack.operations.checker
    assert checker is not None
    return checker.request()


async def test_a_certificate_near_its_end_raises_certificate_expiring_until_it_is_renewed(
    ops_db: OpsDatabase, dev_keys: DevKeys, tmp_path: Path
) -> None:
    authority = Authority(tmp_path, "terminal-ca")
    served = authority.issue("switch", "switch.kiosk.test", server=True)  # a day left
    tls = TlsSettings(
        cert_file=served.cert,
        key_file=served.key,
        client_ca_file=authority.issued.cert,
        handshake_timeout_ms=5_000,
        require_subject_match=True,
        certificate_expiry_warning_days=30,
        refused_log_lines_max=10,
        refused_log_interval_ms=60_000,
    )
    server_subject = "server CN=switch.kiosk.test"
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, receiver=receiver, terminals=1, tls=tls) as stack,
    ):
        kiosk = stack.world.terminals[0]
        fired = await receiver.wait_for("certificate_expiring", "firing", server_subject)
        assert fired["alert"]["terminal_id"] is None
        assert fired["alert"]["summary"].startswith("this switch's server certificate expires")
        short = authority.issue("short", kiosk)  # a day left: within 30
        await stack.terminal(0, tls=client_context(authority.issued, short))
        fired = await receiver.wait_for("certificate_expiring", "firing", kiosk)
        assert fired["alert"]["terminal_id"] == kiosk
        assert fired["alert"]["summary"].startswith(
            f"the client certificate of terminal {kiosk} expires at"
        )
        [alert] = await stack.alerts(rule="certificate_expiring", subject=kiosk)
        assert alert["state"] == "firing"
        # The kiosk gets a certificate for a year and signs on with it.
        await stack.close_clients()
        renewed = authority.issue("renewed", kiosk, lifetime=timedelta(days=365))
        await stack.terminal(0, tls=client_context(authority.issued, renewed))
        resolved = await receiver.wait_for("certificate_expiring", "resolved", kiosk)
        assert resolved["alert"]["alert_id"] == alert["alert_id"]
        await asyncio.sleep(1.0)  # five evaluations: the renewed certificate raises nothing
        assert len(receiver.matching("certificate_expiring", "firing", kiosk)) == 1
        # The switch's own certificate is renewed only by a restart: still firing.
        [own] = await stack.alerts(rule="certificate_expiring", subject=server_subject)
        assert own["state"] == "firing"


async def test_forged_cryptograms_raise_the_arqc_failure_ratio_until_they_stop(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    owner = await asyncpg.connect(ops_db.owner_dsn)
    try:
        world = await load_world(owner, dev_keys, 1, 1, emv=emv_profile(dev_keys, CVN))
    finally:
        await owner.close()
    imk = bytes.fromhex(dev_keys.imk_ac_clear_hex)
    card = ChipCard(ChipProfile.personalise(imk, world.customers[0].pan, PSN, CVN))
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, world=world, receiver=receiver) as stack,
    ):
        terminal = await stack.terminal(0)
        codes = []
        for forged in (False, False, True, False, True, False, True):
            sent = card.generate_arqc(terminal.terminal_data(1_000))
            if forged:  # a cloned card's cryptogram: one bit off
                sent = sent.with_arqc(bytes([sent.arqc[0] ^ 0x01]) + sent.arqc[1:])
            exchange = await terminal.send(terminal.chip_withdrawal(sent, PIN, 1_000))
            codes.append(exchange.code)
        assert codes == ["00", "00", "63", "00", "63", "00", "63"]
        # A magstripe decline is not a chip refusal, and a magstripe request not a chip one.
        await withdraw_all(terminal, world.customers[0].pan, [10_000_000])
        fired = await receiver.wait_for("arqc_failure_ratio", "firing", "fleet")
        # It fires as soon as the window holds requests_min (5) chip requests over the ratio.
        summary = fired["alert"]["summary"]
        refused, chip = counted(summary)
        assert chip >= 5, summary
        assert refused / chip > 0.3, summary
        assert summary.endswith(f" over 30%); most at {terminal.terminal_id} {refused}")
        assert fired["alert"]["severity"] == "critical"
        metrics: str = await stack.get("/metrics")
        assert 'switch_chip_requests_total{response_code="63"} 3.0' in metrics
        # Once the window has passed without them, it resolves.
        await receiver.wait_for("arqc_failure_ratio", "resolved", "fleet")


async def test_a_kiosk_paid_out_to_its_last_note_raises_cash_low_then_out_until_replenished(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    cassettes = [
        {"cassette": 1, "denomination_minor": 5_000, "notes": 2, "low_notes": 1},
        {"cassette": 2, "denomination_minor": 2_000, "notes": 5, "low_notes": 0},
    ]
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, terminals=1, cassettes=cassettes, receiver=receiver) as stack,
    ):
        terminal = await stack.terminal(0)
        kiosk = terminal.terminal_id
        pan = stack.world.customers[0].pan
        assert await withdraw_all(terminal, pan, [5_000]) == ["00"]  # one 50 left: its low mark
        low = await receiver.wait_for("cash_low", "firing", kiosk)
        assert low["alert"]["summary"].endswith(
            "cash low: cassette 1 (notes of 5000 EUR minor units) 1 left, low mark 1"
        )
        assert await withdraw_all(terminal, pan, [15_000]) == ["00"]  # 50 + 5 x 20: none left
        out = await receiver.wait_for("cash_out", "firing", kiosk)
        assert (out["alert"]["severity"], out["alert"]["terminal_id"]) == ("critical", kiosk)
        await receiver.wait_for("cash_low", "resolved", kiosk)  # out, not low: one alert
        status, _ = await call(
            stack, "POST", f"/terminals/{kiosk}/cassettes/2/replenish", json={"notes": 50}
        )
        assert status == 200
        await receiver.wait_for("cash_out", "resolved", kiosk)
        # Cassette 1 is still empty: low again, a new alert, until it is replenished too.
        again = await eventually(lambda: _nth(receiver.matching("cash_low", "firing", kiosk), 1))
        assert again["alert"]["alert_id"] != low["alert"]["alert_id"]
        status, _ = await call(
            stack, "POST", f"/terminals/{kiosk}/cassettes/1/replenish", json={"notes": 20}
        )
        assert status == 200
        await eventually(lambda: _nth(receiver.matching("cash_low", "resolved", kiosk), 1))


async def _nth(found: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    return found[index] if len(found) > index else None


async def test_a_miscounting_kiosk_raises_terminal_imbalance_until_it_balances(
    ops_db: OpsDatabase, dev_keys: DevKeys
) -> None:
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, terminals=1, cassettes=CASSETTES, receiver=receiver) as stack,
    ):
        terminal = await stack.terminal(0)
        kiosk = terminal.terminal_id
        withdrawal = await terminal.send(
            terminal.withdrawal(stack.world.customers[0].pan, PIN, 9_000)
        )
        assert withdrawal.code == "00"
        day = withdrawal.response.fields[15]
        figures = DayFigures(debits=1, debits_minor=9_000, net_minor=9_000)
        counted = (CassetteCounter(1, 5_000, 1, 0, 1), CassetteCounter(2, 2_000, 2, 0, 1))
        miscounted = (counted[0], CassetteCounter(2, 2_000, 3, 0, 0))  # one note too many
        assert (
            await terminal.send(balancing_request(terminal, day, figures, miscounted))
        ).code == "95"
        fired = await receiver.wait_for("terminal_imbalance", "firing", kiosk)
        assert fired["alert"]["summary"].endswith("(EUR): its F124 differ from the host's")
        assert (
            await terminal.send(balancing_request(terminal, day, figures, counted))
        ).code == "00"
        await receiver.wait_for("terminal_imbalance", "resolved", kiosk)
