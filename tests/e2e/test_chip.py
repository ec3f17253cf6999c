"""EMV chip cards end to end over TCP, for every cryptogram version: terminal → switch → HSM
(its own TCP protocol) → PostgreSQL, and the card checking the issuer's ARPC at the end."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
import structlog.testing
from structlog.contextvars import merge_contextvars

from hsm import emv
from hsm.devkeys import DevKeys
from hsm.errors import HsmUnavailable
from kiosk_sim import load
from kiosk_sim.chip import ChipCard, ChipProfile, Cryptogram, IssuerAuthentication
from kiosk_sim.population import LedgerView, build, provision
from kiosk_sim.terminal import Exchange, Terminal
from ledger.pan import mask_pan
from switch.flows import RequestProcessor
from switch.iso8583 import tlv
from tests.conftest import PgCluster
from tests.e2e.conftest import PIN, Stack, StackFactory

START_MINOR = 100_000
PSN = "01"


def emv_profile(keys: DevKeys, cvn: int, *, fallback_allowed: bool = False) -> dict[str, Any]:
    scheme = "visa" if emv.cryptogram_version(cvn).scheme is emv.Scheme.VISA else "mastercard"
    return {
        "imk_ac": keys.imk_ac.to_text(),
        "psn": PSN,
        "scheme": scheme,
        "cvn": cvn,
        "fallback_allowed": fallback_allowed,
    }


async def chip_stack(make_stack: StackFactory, keys: DevKeys, cvn: int, **card: Any) -> Stack:
    return await make_stack(customers=1, emv=emv_profile(keys, cvn, **card))


def chip_card(stack: Stack, cvn: int, customer: int = 0) -> ChipCard:
    imk = bytes.fromhex(stack.keys.imk_ac_clear_hex)
    return ChipCard(ChipProfile.personalise(imk, stack.customers[customer].pan, PSN, cvn))


async def withdraw(
    terminal: Terminal, card: ChipCard, amount_minor: int
) -> tuple[Cryptogram, Exchange, IssuerAuthentication]:
    cryptogram = card.generate_arqc(terminal.terminal_data(amount_minor))
    exchange = await terminal.send(terminal.chip_withdrawal(cryptogram, PIN, amount_minor))
    return cryptogram, exchange, card.authenticate_issuer(cryptogram, exchange.response.get(55))


async def journal_codes(stack: Stack, customer_id: int) -> list[tuple[str, str]]:
    rows = await stack.owner.fetch(
        "SELECT kind, response_code FROM ledger.transactions"
        " WHERE customer_id = $1 AND kind <> 'opening' ORDER BY transaction_id",
        customer_id,
    )
    return [(row["kind"], row["response_code"]) for row in rows]


async def last_atc(stack: Stack, customer_id: int) -> int | None:
    value: int | None = await stack.owner.fetchval(
        "SELECT emv_last_atc FROM ledger.cards WHERE customer_id = $1", customer_id
    )
    return value


@pytest.mark.parametrize("cvn", emv.CRYPTOGRAM_VERSIONS)
async def test_chip_withdrawal_replay_and_bad_arqc(
    make_stack: StackFactory, dev_keys: DevKeys, cvn: int
) -> None:
    stack = await chip_stack(make_stack, dev_keys, cvn)
    terminal = await stack.terminal()
    customer = stack.customers[0]
    card = chip_card(stack, cvn)

    sent, approved, card_says = await withdraw(terminal, card, 2_000)
    assert (approved.code, approved.response_mac_ok) == ("00", True)
    assert card_says == IssuerAuthentication(arpc_verified=True, issuer_approves=True)
    assert set(tlv.decode(bytes.fromhex(approved.response.get(55) or ""))) == {0x91}
    assert await stack.balance(customer.checking) == START_MINOR - 2_000
    assert await last_atc(stack, customer.customer_id) == sent.atc

    # The very same F55 again under a new STAN, then a fresh ARQC for the old counter.
    replayed = await terminal.send(terminal.chip_withdrawal(sent, PIN, 2_000))
    clone = card.cryptogram_at(sent.atc, terminal.terminal_data(3_000))
    cloned = await terminal.send(terminal.chip_withdrawal(clone, PIN, 3_000))
    assert (replayed.code, cloned.code) == ("63", "63")
    assert replayed.response.get(55) is None  # no ARPC for a replay

    # An ARQC under another key: the card's, but a bit changed.
    fresh = card.generate_arqc(terminal.terminal_data(1_000))
    forged = fresh.with_arqc(bytes([fresh.arqc[0] ^ 0x01]) + fresh.arqc[1:])
    bad = await terminal.send(terminal.chip_withdrawal(forged, PIN, 1_000))
    assert (bad.code, bad.response.get(55)) == ("63", None)

    # A decline after the ARQC verified still carries an ARPC, one the card verifies and that
    # tells it the issuer declined; the ATC is spent all the same.
    _sent, over, card_says = await withdraw(terminal, card, 60_000)  # the card's limit: 50,000
    assert over.code == "61"
    assert card_says == IssuerAuthentication(arpc_verified=True, issuer_approves=False)

    assert await stack.balance(customer.checking) == START_MINOR - 2_000
    assert await journal_codes(stack, customer.customer_id) == [
        ("withdrawal", "00"),
        ("decline", "63"),
        ("decline", "63"),
        ("decline", "63"),
        ("withdrawal", "61"),
    ]
    assert await last_atc(stack, customer.customer_id) == card.last_atc


@pytest.mark.parametrize("cvn", emv.CRYPTOGRAM_VERSIONS)
async def test_an_arqc_under_another_key_or_for_another_amount_is_declined_and_audited(
    make_stack: StackFactory, dev_keys: DevKeys, cvn: int
) -> None:
    stack = await chip_stack(make_stack, dev_keys, cvn)
    terminal = await stack.terminal()
    customer = stack.customers[0]
    card = chip_card(stack, cvn)
    # A card whose keys come from another issuer master key: a cloned number, not the card.
    clone = ChipCard(ChipProfile.personalise(bytes(range(16)), customer.pan, PSN, cvn))
    sent = card.generate_arqc(terminal.terminal_data(1_000))
    # The ARQC covers 10.00: 9F02 raised to the 50.00 of F4 no longer matches it; F4 alone
    # raised is not what the chip says.
    raised = Cryptogram(
        sent.profile, MappingProxyType({**sent.tags, 0x9F02: bytes.fromhex("000000005000")})
    )
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        answers = [
            (await withdraw(terminal, clone, 1_000))[1],
            await terminal.send(terminal.chip_withdrawal(raised, PIN, 5_000)),
            await terminal.send(terminal.chip_withdrawal(sent, PIN, 5_000)),
        ]
    assert [(a.code, a.response.get(55), a.response_mac_ok) for a in answers] == [
        ("63", None, True),
        ("63", None, True),
        ("13", None, True),
    ]
    events = [e["event_kind"] for e in logs if e["event"] == "security_event"]
    assert events == ["arqc_failure", "arqc_failure", "icc_amount_mismatch"]
    # Nothing posted, each recorded in the journal, no ATC spent: the card's own goes through.
    assert await stack.balance(customer.checking) == START_MINOR
    assert await journal_codes(stack, customer.customer_id) == [("decline", "63")] * 2 + [
        ("decline", "13")
    ]
    assert await last_atc(stack, customer.customer_id) is None
    assert (await terminal.send(terminal.chip_withdrawal(sent, PIN, 1_000))).code == "00"


@pytest.mark.parametrize("cvn", emv.CRYPTOGRAM_VERSIONS)
async def test_fallback_and_the_cards_own_decline(
    make_stack: StackFactory, dev_keys: DevKeys, cvn: int
) -> None:
    refused = await chip_stack(make_stack, dev_keys, cvn)
    allowed = await chip_stack(make_stack, dev_keys, cvn, fallback_allowed=True)
    for stack, code in ((refused, "57"), (allowed, "00")):
        terminal = await stack.terminal()
        customer = stack.customers[0]
        stripe = terminal.stripe_withdrawal(
            customer.pan, PIN, 1_000, expiry_yymm="2812", service_code="201"
        )
        assert (await terminal.send(stripe)).code == code
        expected_minor = START_MINOR - (1_000 if code == "00" else 0)
        assert await stack.balance(customer.checking) == expected_minor

    # The host approves, but the card finds the ARPC wrong (here: one bit of it flipped on the
    # way) and declines with an AAC; the kiosk reverses with that second cryptogram in F55.
    terminal = await allowed.terminal()
    customer = allowed.customers[0]
    card = chip_card(allowed, cvn)
    sent, approved, _ = await withdraw(terminal, card, 4_000)
    assert approved.code == "00"
    data = tlv.decode(bytes.fromhex(approved.response.get(55) or ""))[0x91]
    garbled = tlv.encode([(0x91, bytes([data[0] ^ 0x80]) + data[1:])]).hex()
    assert not card.authenticate_issuer(sent, garbled).approve
    reversal = terminal.chip_reversal(approved.request, card.decline(sent))
    assert (await terminal.send(reversal)).code == "00"
    assert await allowed.balance(customer.checking) == START_MINOR - 1_000


@pytest.mark.parametrize("cvn", emv.CRYPTOGRAM_VERSIONS)
async def test_a_repeated_chip_request_carries_its_arpc_again(
    make_stack: StackFactory, dev_keys: DevKeys, cvn: int
) -> None:
    """The same 0200 sent again (same F7 and STAN: its answer was lost) gets the first answer's
    F55, MACed, and the card verifies it; nothing moves again, nor does the card's ATC."""
    stack = await chip_stack(make_stack, dev_keys, cvn)
    terminal = await stack.terminal()
    customer = stack.customers[0]
    card = chip_card(stack, cvn)

    # Approved, declined by the ledger (the card's limit is 50,000), a wrong PIN: each repeated.
    firsts = []
    for amount_minor, pin, code in ((2_000, PIN, "00"), (60_000, PIN, "61"), (1_000, "9999", "55")):
        sent = card.generate_arqc(terminal.terminal_data(amount_minor))
        first = await terminal.send(terminal.chip_withdrawal(sent, pin, amount_minor))
        again = await terminal.send(first.request)
        assert (first.code, again.code, again.response_mac_ok) == (code, code, True)
        assert again.response.get(55) == first.response.get(55) is not None
        assert card.authenticate_issuer(sent, again.response.get(55)) == IssuerAuthentication(
            arpc_verified=True, issuer_approves=code == "00"
        )
        firsts.append((sent, first))

    # A declined replay of the first ATC had no tag 91; nor has its repeat.
    (approved_sent, approved), *_ = firsts
    replay = await terminal.send(terminal.chip_withdrawal(approved_sent, PIN, 2_000))
    replay_again = await terminal.send(replay.request)
    assert [(e.code, e.response.get(55)) for e in (replay, replay_again)] == [("63", None)] * 2
    # The card has been used since the approval: its repeat now is not a retransmission of the
    # card's last request, and gets the stored approval without tag 91.
    late = await terminal.send(approved.request)
    assert (late.code, late.response.get(55), late.response_mac_ok) == ("00", None, True)

    assert await stack.balance(customer.checking) == START_MINOR - 2_000
    assert await last_atc(stack, customer.customer_id) == card.last_atc == 3
    assert await journal_codes(stack, customer.customer_id) == [
        ("withdrawal", "00"),
        ("withdrawal", "61"),
        ("pin", "55"),
        ("decline", "63"),
    ]


async def test_a_repeat_the_hsm_cannot_answer_gets_its_stored_answer_without_tag_91(
    make_stack: StackFactory, dev_keys: DevKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await chip_stack(make_stack, dev_keys, 18)
    terminal = await stack.terminal()
    card = chip_card(stack, 18)
    _, approved, _ = await withdraw(terminal, card, 2_000)
    assert approved.code == "00"

    async def unavailable(*_args: object, **_kwargs: object) -> None:
        raise HsmUnavailable("no HSM answered")

    assert isinstance(stack.server.handler, RequestProcessor)
    for name in ("verify_arqc", "verify_arqc_for"):
        monkeypatch.setattr(stack.server.handler._hsm, name, unavailable)
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        again = await terminal.send(approved.request)
    assert (again.code, again.response.get(55), again.response_mac_ok) == ("00", None, True)
    assert [e["error"] for e in logs if e["event"] == "arpc_not_generated"] == ["no HSM answered"]
    assert await stack.balance(stack.customers[0].checking) == START_MINOR - 2_000


OTHER_PAN = "4111111111111111"


@pytest.mark.parametrize("cvn", [18, 20])
async def test_the_chips_card_number_and_sequence_number_are_the_requests(
    make_stack: StackFactory, dev_keys: DevKeys, cvn: int
) -> None:
    """5A and 57 naming another card than F2: `30`, the tag logged, no digits of either number;
    a chip of another PAN sequence number than the profile's: `14`, recorded."""
    stack = await chip_stack(make_stack, dev_keys, cvn)
    terminal = await stack.terminal()
    customer = stack.customers[0]
    card = chip_card(stack, cvn)
    other_track = bytes.fromhex(f"{OTHER_PAN}D2812201" + "00000F")
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        codes = []
        for tag, value in ((0x5A, bytes.fromhex(OTHER_PAN)), (0x57, other_track)):
            sent = card.generate_arqc(terminal.terminal_data(1_000))
            forged = Cryptogram(sent.profile, MappingProxyType({**sent.tags, tag: value}))
            answer = await terminal.send(terminal.chip_withdrawal(forged, PIN, 1_000))
            codes.append((answer.code, answer.response_mac_ok, answer.response.get(55)))
        reissued = ChipCard(
            ChipProfile.personalise(
                bytes.fromhex(stack.keys.imk_ac_clear_hex), customer.pan, "02", cvn
            )
        )
        _, other_issue, _ = await withdraw(terminal, reissued, 1_000)
    assert codes == [("30", True, None), ("30", True, None)]
    assert other_issue.code == "14"
    refused = [(e["tag"], e["reason"]) for e in logs if e["event"] == "icc_data_refused"]
    assert refused == [
        ("5A", "tag 5A's card number is not F2's"),
        ("57", "tag 57's card number is not F2's"),
    ]
    events = [(e.get("event_kind"), e.get("card")) for e in logs if e["event"] == "security_event"]
    assert events == [("psn_mismatch", mask_pan(customer.pan))]
    for number in (customer.pan, OTHER_PAN):
        assert number not in repr(logs)
    # The refusals were not journalled and spent no ATC; the PSN decline is recorded.
    assert await journal_codes(stack, customer.customer_id) == [("decline", "14")]
    assert await last_atc(stack, customer.customer_id) is None
    assert (await withdraw(terminal, card, 1_000))[1].code == "00"


async def test_simulated_chip_kiosks_under_load(
    make_stack: StackFactory, pg_cluster: PgCluster
) -> None:
    """Every chip scenario from seeded kiosks at once; the kiosks' cards check each ARPC, the
    replays, forged ARQCs and refused fallbacks must all be declined, and the end state must be
    what the answers said."""
    stack = await make_stack(customers=1)
    population = build(seed=61, customers=14, terminals=4)  # every CVN, fallback both ways
    await provision(pg_cluster.owner_dsn, population)
    mix = {"chip_withdrawal": 3, "chip_replay": 1, "bad_arqc": 1, "fallback": 2}
    plan = load.Plan(terminals=4, seed=61, mix=mix, duration_s=None, count=120)
    report = await load.run(
        plan, population, "127.0.0.1", stack.server.port, ledger=LedgerView(pg_cluster.owner_dsn)
    )
    assert report.differences == []
    assert report.errors.get("arpc_failed", 0) == 0
    assert {"00", "57", "63"} <= set(report.response_codes)
    assert set(report.response_codes) <= {"00", "57", "63"}
    # Provisioned again, the cards go on from the ATCs the ledger saw: nothing is a replay. The
    # kiosks run from another seed: the same one would send the same STANs, which within the
    # same second are the first run's requests repeated (answered from the store).
    again = build(seed=61, customers=14, terminals=4)
    await provision(pg_cluster.owner_dsn, again)
    report = await load.run(
        replace(plan, seed=62, mix={"chip_withdrawal": 1}, count=28),
        again, "127.0.0.1", stack.server.port,
    )  # fmt: skip
    assert report.response_codes == {"00": 28}


MALFORMED_ICC = [
    ("truncated", "9F2608"),
    ("a length past the field", "9F2608AABBCCDD"),
    ("overlong length", "9F26810800000000000000009F270180"),
    ("unknown critical tag", "9F4F0100"),
    ("duplicate tags", "9F2701809F270180"),
]


async def test_malformed_icc_data_is_a_format_error_naming_the_tag_on_an_open_connection(
    make_stack: StackFactory, dev_keys: DevKeys
) -> None:
    stack = await chip_stack(make_stack, dev_keys, 18)
    terminal = await stack.terminal()
    card = chip_card(stack, 18)
    good = terminal.chip_withdrawal(card.generate_arqc(terminal.terminal_data(1_000)), PIN, 1_000)
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        for _name, icc_hex in MALFORMED_ICC:
            bad = terminal.financial("0200", {**good.replace({55: icc_hex}).fields})
            answer = await terminal.send(bad)
            assert (answer.code, answer.response_mac_ok) == ("30", True)
    refused = [event for event in logs if event["event"] == "icc_data_refused"]
    assert [(event["tag"], event["response_code"]) for event in refused] == [
        ("9F26", "30"),
        ("9F26", "30"),
        ("9F26", "30"),
        ("9F4F", "30"),
        ("9F27", "30"),
    ]
    assert all("F55:" in event["reason"] for event in refused)
    # Nothing was journalled for them, and the connection still serves the card.
    assert await journal_codes(stack, stack.customers[0].customer_id) == []
    assert not terminal.client.closed_by_peer
    approved = await terminal.send(good)
    assert approved.code == "00"
    # A reversal's F55 is checked for form only: the card's cryptogram type alone will do.
    undo = terminal.reversal(approved.request).replace({22: "051", 55: "9F270100"})
    assert (await terminal.send(terminal.sign(undo))).code == "00"
    assert await stack.balance(stack.customers[0].checking) == START_MINOR
