"""Terminals of other kinds: AES keys (PIN format 4, AES-CMAC) and DUKPT PIN pads (F53)."""

from __future__ import annotations

import os
import random

from hsm import crypto, dukpt
from hsm.crypto import Algorithm
from hsm.keys import KeyRole
from kiosk_sim.client import TerminalClient
from kiosk_sim.epp import Epp
from kiosk_sim.terminal import Terminal
from tests.e2e.conftest import LMK, PIN, Stack, StackFactory, now

INITIAL_KSN = bytes.fromhex("FFFF9876543210E00000")


async def connect(stack: Stack, epp: Epp) -> Terminal:
    client = await TerminalClient.connect("127.0.0.1", stack.server.port)
    terminal = Terminal(stack.world.terminals[0], epp, client, clock=now, rng=random.Random(5))
    assert (await terminal.sign_on()).approved
    assert (await terminal.change_keys()).approved
    return terminal


async def test_an_aes_terminal_uses_format_4_and_aes_cmac(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=1)
    tmk = os.urandom(16)
    stored = LMK.wrap(KeyRole.TMK, Algorithm.AES, tmk)
    await stack.owner.execute(
        "UPDATE ledger.terminals SET tmk = $1 WHERE terminal_id = $2",
        stored.to_text(),
        stack.world.terminals[0],
    )
    terminal = await connect(stack, Epp(tmk, algorithm=Algorithm.AES))
    try:
        assert terminal.epp.tpk is not None
        assert len(terminal.epp.tpk) == 16
        exchange = await terminal.send(terminal.withdrawal(stack.customers[0].pan, PIN, 1_000))
        assert exchange.code == "00"
        assert exchange.response_mac_ok is True
        wrong = await terminal.send(terminal.withdrawal(stack.customers[0].pan, "0000", 1_000))
        assert wrong.code == "55"
    finally:
        await terminal.client.close()


async def test_a_dukpt_terminal_sends_its_ksn_in_f53(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=1)
    bdk = crypto.with_odd_parity(os.urandom(16))
    stored = LMK.wrap(KeyRole.BDK, Algorithm.TDES, bdk)
    await stack.owner.execute(
        "UPDATE ledger.terminals SET bdk = $1 WHERE terminal_id = $2",
        stored.to_text(),
        stack.world.terminals[0],
    )
    epp = Epp(
        bytes.fromhex(stack.keys.tmk_clear_hex),
        ipek=dukpt.tdes_ipek(bdk, INITIAL_KSN),
        initial_ksn=INITIAL_KSN,
    )
    terminal = await connect(stack, epp)
    try:
        request = terminal.withdrawal(stack.customers[0].pan, PIN, 1_000)
        assert request.get(53) == "FFFF9876543210E00001"
        assert (await terminal.send(request)).code == "00"
        assert (
            await terminal.send(terminal.withdrawal(stack.customers[0].pan, "0000", 100))
        ).code == "55"
        assert (
            await terminal.send(terminal.balance_inquiry(stack.customers[0].pan, PIN))
        ).code == "00"
    finally:
        await terminal.client.close()


async def test_f53_from_a_terminal_without_a_bdk_is_refused(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=1)
    epp = Epp(bytes.fromhex(stack.keys.tmk_clear_hex), ipek=bytes(16), initial_ksn=INITIAL_KSN)
    terminal = await connect(stack, epp)
    try:
        assert (
            await terminal.send(terminal.withdrawal(stack.customers[0].pan, PIN, 100))
        ).code == "58"
    finally:
        await terminal.client.close()
