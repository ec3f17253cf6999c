"""Every ATM flow end to end: terminal → TCP → switch → HSM (TCP) → PostgreSQL, and back."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import pytest
import structlog.testing
from structlog.contextvars import merge_contextvars

from hsm.server import HsmServer, ServerConfig
from kiosk_sim import load
from kiosk_sim.population import LedgerView, build, provision
from kiosk_sim.terminal import Terminal
from switch.iso8583.elements import ReplacementAmounts, decode_additional_amounts
from tests.conftest import PgCluster
from tests.e2e.conftest import (
    DEADLINE_MS,
    PIN,
    StackFactory,
    hsm_core,
    now,
    until_answered,
)
from tests.switch.scraped import value

START_MINOR = 100_000  # each test customer's checking and savings balance
APPROVED = frozenset({"00"})
SETTLED = frozenset({"00", "25"})  # a reversal applied, or kept against a never-posted original


async def test_sign_on_key_change_withdrawal_with_macs(make_stack: StackFactory) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    customer = stack.customers[0]
    exchange = await terminal.send(terminal.withdrawal(customer.pan, PIN, 2_000))
    response = exchange.response
    assert exchange.code == "00"
    assert exchange.response_mac_ok is True
    assert response.mti == "0210"
    assert response.get(38) is not None
    assert len(response.get(37) or "") == 12
    balances = decode_additional_amounts(response.get(54) or "")
    assert [(a.amount_type, a.currency_numeric, a.amount_minor) for a in balances] == [
        ("01", "978", START_MINOR - 2_000),
        ("02", "978", START_MINOR - 2_000),
    ]
    assert await stack.balance(customer.checking) == START_MINOR - 2_000


async def test_balance_inquiry_and_transfer_between_own_accounts(make_stack: StackFactory) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    customer = stack.customers[0]
    moved = await terminal.send(
        terminal.transfer(customer.pan, PIN, 7_500, from_account="20", to_account="10")
    )
    assert moved.code == "00"
    inquiry = await terminal.send(terminal.balance_inquiry(customer.pan, PIN, account="10"))
    assert inquiry.code == "00"
    assert (
        decode_additional_amounts(inquiry.response.get(54) or "")[0].amount_minor
        == START_MINOR + 7_500
    )
    assert await stack.balance(customer.checking) == START_MINOR - 7_500


async def test_wrong_pin_then_tries_exceeded_blocks_the_card(make_stack: StackFactory) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    pan = stack.customers[0].pan
    codes = [(await terminal.send(terminal.withdrawal(pan, "9999", 1_000))).code for _ in range(3)]
    assert codes == ["55", "55", "75"]
    after = await terminal.send(terminal.withdrawal(pan, PIN, 1_000))
    assert after.code == "75"
    status = await stack.owner.fetchval(
        "SELECT status FROM ledger.cards WHERE customer_id = $1", stack.customers[0].customer_id
    )
    assert status == "blocked"


async def test_card_declines(make_stack: StackFactory) -> None:
    expired = await make_stack(customers=1, expiry="2001")
    terminal = await expired.terminal()
    assert (
        await terminal.send(terminal.withdrawal(expired.customers[0].pan, PIN, 100))
    ).code == "54"

    blocked = await make_stack(customers=1, status="lost")
    terminal = await blocked.terminal()
    assert (
        await terminal.send(terminal.withdrawal(blocked.customers[0].pan, PIN, 100))
    ).code == "62"

    unknown = "4000000000000002"
    assert (await terminal.send(terminal.withdrawal(unknown, PIN, 100))).code == "14"


async def test_limits_and_funds(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=2, max_per_txn_minor=30_000, daily_count=2)
    terminal = await stack.terminal()
    first, second = stack.customers
    assert (await terminal.send(terminal.withdrawal(first.pan, PIN, 30_001))).code == "61"
    assert (await terminal.send(terminal.withdrawal(first.pan, PIN, 100))).code == "00"
    assert (await terminal.send(terminal.withdrawal(first.pan, PIN, 100))).code == "00"
    assert (await terminal.send(terminal.withdrawal(first.pan, PIN, 100))).code == "65"
    # Savings has no overdraft: more than the balance is insufficient funds.
    assert (
        await terminal.send(terminal.withdrawal(second.pan, PIN, 30_000, account="10"))
    ).code == "00"
    for _ in range(2):
        await terminal.send(
            terminal.transfer(second.pan, PIN, 30_000, from_account="10", to_account="20")
        )
    assert (
        await terminal.send(terminal.withdrawal(second.pan, PIN, 20_000, account="10"))
    ).code == "51"
    assert await stack.balance(second.savings) == START_MINOR - 30_000 - 60_000


async def test_bad_mac_is_declined_and_audited(make_stack: StackFactory) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    request = terminal.withdrawal(stack.customers[0].pan, PIN, 1_000)
    tampered = request.replace({4: "000000100000"})  # the MAC was over 1,000
    exchange = await terminal.send(tampered)
    assert exchange.code == "05"
    assert await stack.balance(stack.customers[0].checking) == START_MINOR
    recorded = await stack.owner.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1 AND response_code = '05'",
        terminal.terminal_id,
    )
    assert recorded == 1


async def test_terminal_must_act_as_itself_and_be_known(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=1, terminals=2)
    terminal = await stack.terminal(0)
    other_id = stack.world.terminals[1]
    impostor = terminal.sign(
        terminal.withdrawal(stack.customers[0].pan, PIN, 100).replace({41: other_id})
    )
    assert (await terminal.send(impostor)).code == "58"

    stranger = await stack.terminal(1, sign_on=False, keys=False)
    stranger.terminal_id = "NOBODY01"
    assert (await stranger.sign_on()).code == "58"
    unsigned = impostor.replace({41: "NOBODY01", 11: stranger.next_stan()})
    assert (await stranger.client.request(unsigned)).response_code == "58"


async def test_reversal_full_partial_and_repeated(make_stack: StackFactory) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    customer = stack.customers[0]
    full = await terminal.send(terminal.withdrawal(customer.pan, PIN, 5_000))
    reversal = terminal.reversal(full.request)
    answered = await terminal.send(reversal)
    assert (answered.response.mti, answered.code) == ("0430", "00")
    assert (await terminal.send(terminal.repeat_of(reversal))).code == "00"
    assert await stack.balance(customer.checking) == START_MINOR

    partial = await terminal.send(terminal.withdrawal(customer.pan, PIN, 10_000))
    assert (
        await terminal.send(terminal.reversal(partial.request, dispensed_minor=4_000))
    ).code == "00"
    assert await stack.balance(customer.checking) == START_MINOR - 4_000


async def test_a_reversal_changed_after_its_mac_gives_nothing_back(
    make_stack: StackFactory,
) -> None:
    """A partial reversal (40.00 of 100.00 dispensed) whose F95 is changed on the way to say
    nothing was: the HSM's MAC check fails, so it gives no word; declined and recorded."""
    stack = await make_stack()
    terminal = await stack.terminal()
    customer = stack.customers[0]
    taken = await terminal.send(terminal.withdrawal(customer.pan, PIN, 10_000))
    partial = terminal.reversal(taken.request, dispensed_minor=4_000)
    tampered = partial.replace({95: ReplacementAmounts(0).encode()})  # the MAC was over 4,000
    assert (await terminal.send(tampered)).code == "05"
    assert await stack.balance(customer.checking) == START_MINOR - 10_000


async def test_a_reversal_stating_another_amount_than_its_original_is_declined(
    make_stack: StackFactory,
) -> None:
    """MACed by the terminal, so the HSM gives its word, but for F4 = 90.00 where the original
    was 100.00: no reversal of that original (13), and nothing moves."""
    stack = await make_stack()
    terminal = await stack.terminal()
    customer = stack.customers[0]
    taken = await terminal.send(terminal.withdrawal(customer.pan, PIN, 10_000))
    other = terminal.sign(terminal.reversal(taken.request).replace({4: f"{9_000:012d}"}))
    assert (await terminal.send(other)).code == "13"
    assert await stack.balance(customer.checking) == START_MINOR - 10_000


async def test_a_switch_that_checks_no_macs_declines_reversals(make_stack: StackFactory) -> None:
    """Without MACs there is no word for a reversal: it is declined (58), recorded, and its
    repeat gets the same answer; the withdrawal stands (settled at balancing)."""
    stack = await make_stack(require_mac=False)
    terminal = await stack.terminal(mac=False)
    customer = stack.customers[0]
    taken = await terminal.send(terminal.withdrawal(customer.pan, PIN, 5_000))
    assert taken.code == "00"
    reversal = terminal.reversal(taken.request)
    assert (await terminal.send(reversal)).code == "58"
    assert (await terminal.send(terminal.repeat_of(reversal))).code == "58"
    assert await stack.balance(customer.checking) == START_MINOR - 5_000


async def test_reversal_before_its_original_declines_the_late_original(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    customer = stack.customers[0]
    original = terminal.withdrawal(customer.pan, PIN, 3_000)
    # Not seen yet: "original not found", but the reversal is kept...
    assert (await terminal.send(terminal.reversal(original))).code == "25"
    # ...so the original, arriving late, is declined and moves no money.
    assert (await terminal.send(original)).code == "05"
    assert await stack.balance(customer.checking) == START_MINOR


async def test_repeated_request_gets_the_stored_response_and_posts_once(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    customer = stack.customers[0]
    request = terminal.withdrawal(customer.pan, PIN, 2_500)
    first = await terminal.send(request)
    again = await terminal.send(request)
    assert first.code == again.code == "00"
    assert again.response.get(38) == first.response.get(38)
    assert again.response.get(37) == first.response.get(37)
    assert await stack.balance(customer.checking) == START_MINOR - 2_500


async def test_transfers_both_ways_between_two_customers_at_once(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=2, terminals=2, cross_customer=True)
    left, right = await stack.terminal(0), await stack.terminal(1)
    ada, bob = stack.customers

    async def send_many(terminal: Terminal, payer: str, payee_account: str) -> list[str]:
        requests = [
            terminal.transfer(payer, PIN, 100, from_account="20", to_account_number=payee_account)
            for _ in range(10)
        ]
        return [e.code for e in await asyncio.gather(*(terminal.send(r) for r in requests))]

    ada_codes, bob_codes = await asyncio.gather(
        send_many(left, ada.pan, bob.checking), send_many(right, bob.pan, ada.checking)
    )
    assert ada_codes == bob_codes == ["00"] * 10
    assert await stack.balance(ada.checking) == START_MINOR
    assert await stack.balance(bob.checking) == START_MINOR


async def test_pipelined_requests_on_one_connection(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=4)
    terminal = await stack.terminal()
    requests = [terminal.balance_inquiry(c.pan, PIN) for c in stack.customers]
    requests += [terminal.withdrawal(c.pan, PIN, 100) for c in stack.customers]
    exchanges = await asyncio.gather(*(terminal.send(r) for r in requests))
    assert [e.code for e in exchanges] == ["00"] * 8
    assert all(e.response.stan == e.request.stan for e in exchanges)


async def test_fifty_terminals_at_once(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=10, terminals=50)
    terminals = await asyncio.gather(*(stack.terminal(i) for i in range(50)))
    exchanges = await asyncio.gather(
        *(
            t.send(t.withdrawal(stack.customers[i % 10].pan, PIN, 100))
            for i, t in enumerate(terminals)
        )
    )
    assert [e.code for e in exchanges] == ["00"] * 50
    for customer in stack.customers:
        assert await stack.balance(customer.checking) == START_MINOR - 500


async def test_ledger_unreachable_answers_91_within_the_deadline_then_recovers(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    pan = stack.customers[0].pan
    await stack.db_proxy.cut()
    started = time.monotonic()
    down = await terminal.send(terminal.withdrawal(pan, PIN, 1_000))
    assert down.code == "91"
    assert time.monotonic() - started < 3.0
    await stack.db_proxy.restore()
    up = await until_answered(terminal, lambda: terminal.withdrawal(pan, PIN, 1_000), APPROVED)
    assert up.code == "00"
    assert await stack.balance(stack.customers[0].checking) == START_MINOR - 1_000
    database_errors = value(
        stack.monitor.metrics, "switch_dependency_errors_total", component="database"
    )
    assert database_errors >= 1


async def test_hsm_unreachable_answers_91(make_stack: StackFactory) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    await stack.hsm_servers[0].close()
    started = time.monotonic()
    exchange = await terminal.send(terminal.withdrawal(stack.customers[0].pan, PIN, 1_000))
    assert exchange.code == "91"
    assert time.monotonic() - started < 3.0
    assert await stack.balance(stack.customers[0].checking) == START_MINOR


async def test_key_change_replaces_the_keys_for_the_next_request(make_stack: StackFactory) -> None:
    stack = await make_stack()
    terminal = await stack.terminal()
    old_epp = terminal.epp
    assert (await terminal.change_keys()).approved
    assert terminal.epp.tak != old_epp.tak
    stale = Terminal(
        terminal.terminal_id, old_epp, terminal.client, clock=now, rng=random.Random(1)
    )
    assert (await stale.send(stale.withdrawal(stack.customers[0].pan, PIN, 100))).code == "05"
    assert (await terminal.send(terminal.withdrawal(stack.customers[0].pan, PIN, 100))).code == "00"


async def test_a_message_maced_with_another_terminals_key_is_declined_and_recorded(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(customers=1, terminals=2)
    mine, other = await stack.terminal(0), await stack.terminal(1)
    # A request of `mine`, but MACed under `other`'s TAK.
    forged = Terminal(mine.terminal_id, other.epp, mine.client, clock=now, rng=random.Random(3))
    forged._stan = 500
    exchange = await forged.send(forged.withdrawal(stack.customers[0].pan, PIN, 1_000))
    assert exchange.code == "05"
    assert await stack.balance(stack.customers[0].checking) == START_MINOR
    recorded = await stack.owner.fetchval(
        "SELECT count(*) FROM ledger.transactions WHERE terminal_id = $1 AND response_code = '05'",
        mine.terminal_id,
    )
    assert recorded == 1


async def test_a_posting_in_doubt_gets_no_answer_and_the_reversal_settles_it(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(customers=1)
    terminal = await stack.terminal()
    terminal.timeout_ms = 2_000
    customer = stack.customers[0]
    # Hold the customer's lock so the switch's posting call waits inside PostgreSQL...
    holder = await asyncpg.connect(stack.owner_dsn)
    locking = holder.transaction()
    await locking.start()
    await holder.execute(
        "SELECT 1 FROM ledger.customers WHERE customer_id = $1 FOR UPDATE", customer.customer_id
    )
    request = terminal.withdrawal(customer.pan, PIN, 3_000)
    sent = asyncio.ensure_future(terminal.send(request))
    await asyncio.sleep(0.5)
    # ...then cut the switch off from the database while that call is in flight.
    await stack.db_proxy.cut()
    with pytest.raises(TimeoutError):
        await sent  # no answer: not a 91 about money that may have moved
    await locking.rollback()  # the orphaned posting may now commit, or not
    await holder.close()
    await stack.db_proxy.restore()
    answer = await until_answered(terminal, lambda: terminal.reversal(request), SETTLED)
    assert answer.code in ("00", "25")
    assert await stack.balance(customer.checking) == START_MINOR


async def test_hsm_failover_under_load_then_all_down_then_back(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    stack = await make_stack(customers=1, hsms=2)
    population = build(seed=51, customers=8, terminals=4)
    await provision(pg_cluster.owner_dsn, population)
    plan = load.Plan(terminals=4, seed=51, duration_s=3.0, mix={"withdrawal": 1, "balance": 1})

    async def kill_one() -> None:
        await asyncio.sleep(1.0)
        await stack.hsm_servers[0].close()

    report, _ = await asyncio.gather(
        load.run(
            plan,
            population,
            "127.0.0.1",
            stack.server.port,
            ledger=LedgerView(pg_cluster.owner_dsn),
        ),
        kill_one(),
    )
    assert report.response_codes == {"00": report.answered}  # failover: no declines at all
    assert report.differences == []

    terminal = await stack.terminal()
    pan = stack.customers[0].pan
    port = stack.hsm_servers[1].port
    await stack.hsm_servers[1].close()
    started = time.monotonic()
    assert (await terminal.send(terminal.withdrawal(pan, PIN, 100))).code == "91"
    assert time.monotonic() - started < 2.0
    back = HsmServer(hsm_core(stack.keys), ServerConfig(host="127.0.0.1", port=port))
    await back.start()
    stack.hsm_servers.append(back)
    answer = await until_answered(
        terminal, lambda: terminal.withdrawal(pan, PIN, 100), APPROVED, attempts=30
    )
    assert answer.code == "00"


async def test_a_network_that_drops_traffic_answers_91_in_time_then_recovers(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(customers=1)
    terminal = await stack.terminal()
    pan = stack.customers[0].pan
    stack.db_proxy.blackhole()
    started = time.monotonic()
    pipelined = [terminal.withdrawal(pan, PIN, 1_000) for _ in range(2)]
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        answers = await asyncio.gather(*(terminal.send(request) for request in pipelined))
    assert [answer.code for answer in answers] == ["91", "91"]
    assert time.monotonic() - started < 3.0
    # Logged as slow, with the step it was stuck in: the read, for the whole deadline; each
    # with its own request's terminal, STAN and RRN, bound once by the request's task.
    slow = [event for event in logs if event["event"] == "slow_request"]
    for event in slow:
        assert list(event["steps_ms"]) == ["read_chip", "check_mac", "look_up"]
        assert (event["terminal_id"], event["log_level"]) == (terminal.terminal_id, "warning")
    assert max(event["steps_ms"]["look_up"] for event in slow) >= DEADLINE_MS - 100
    assert sorted(event["stan"] for event in slow) == sorted(str(r.stan) for r in pipelined)
    assert len({event["rrn"] for event in slow}) == 2
    failed = [event for event in logs if event["event"] == "request_failed"]
    assert sorted(event["stan"] for event in failed) == sorted(str(r.stan) for r in pipelined)
    await stack.db_proxy.heal()
    answer = await until_answered(terminal, lambda: terminal.withdrawal(pan, PIN, 1_000), APPROVED)
    assert answer.code == "00"
    assert await stack.balance(stack.customers[0].checking) == START_MINOR - 1_000


async def test_a_sign_off_pipelined_behind_a_key_change_stays_signed_off(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(customers=1)
    terminal = await stack.terminal()
    # The key change waits for the terminal's row, which the test holds locked; the sign-off
    # behind it on the same connection is answered meanwhile.
    holder = await asyncpg.connect(stack.owner_dsn)
    try:
        locked = holder.transaction()
        await locked.start()
        await holder.execute(
            "SELECT 1 FROM ledger.terminals WHERE terminal_id = $1 FOR UPDATE",
            terminal.terminal_id,
        )
        key_change = asyncio.create_task(terminal.change_keys())
        await _until_someone_waits_for_a_lock(stack.owner)
        assert (await terminal.sign_off()).approved
        await locked.commit()
        assert (await key_change).approved
    finally:
        await holder.close()
    # Signed off it stays: the key change did not bring back the session it read before.
    after = await terminal.send(terminal.withdrawal(stack.customers[0].pan, PIN, 100))
    assert after.code == "58"
    assert await stack.balance(stack.customers[0].checking) == START_MINOR


async def _until_someone_waits_for_a_lock(conn: asyncpg.Connection) -> None:
    # pg_locks, as the owner may not read other roles' pg_stat_activity.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nobody waits for a lock")
