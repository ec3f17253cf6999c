"""The networked HSM admits only its hosts: mutual TLS, then per-client command profiles.
Each test is an attack that must fail."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from hsm import commands as cmd
from hsm import emv, mac, wire
from hsm.access import PROFILES, AccessPolicy, ClientRule
from hsm.api import Ibm3624Method
from hsm.client import NetworkHSM
from hsm.crypto import Algorithm
from hsm.devkeys import DevKeys
from hsm.emv import ArqcResult
from hsm.engine import SoftHsm
from hsm.errors import CommandNotPermittedError, HsmUnavailable
from hsm.keys import KeyRole
from hsm.pinblock import PinBlockFormat as F
from hsm.server import HsmServer, ServerConfig
from hsm.tls import client_context
from kiosk_sim.pki import Issued
from kiosk_sim.pki import client_context as raw_context
from switch.app import open_hsm
from switch.iso8583.spec import Dialect
from switch.settings import SettingsError, load_settings

from . import test_reversal_word
from .support import LMK, Pki, der

PAN = "4012345678909"
TAK_CLEAR = bytes(range(16))
TAK = LMK.wrap(KeyRole.TAK, Algorithm.TDES, TAK_CLEAR)
DATA = b"0200 withdrawal"
POLICY = AccessPolicy((ClientRule("switch-1", "switch"), ClientRule("officer", "admin")))
# The Visa CVN 18 vector of tests/vectors/emv.json.
VISA = json.loads((Path(__file__).parents[1] / "vectors" / "emv.json").read_text())["cvn"]


def verify_published_arqc(hsm: NetworkHSM) -> Awaitable[ArqcResult]:
    tags = {int(tag, 16): bytes.fromhex(value) for tag, value in VISA["visa"]["tags"].items()}
    tags[emv.TAG_IAD] = bytes.fromhex(VISA["visa"]["cvn18"]["iad"])
    imk = LMK.wrap(KeyRole.IMK_AC, Algorithm.TDES, bytes.fromhex(VISA["imk_ac"]))
    arqc = bytes.fromhex(VISA["visa"]["cvn18"]["arqc"])
    atc = bytes.fromhex(VISA["atc"])
    csu = emv.Csu(bytes(4))
    return hsm.verify_arqc(
        imk, VISA["pan"], VISA["psn"], atc, arqc, cvn=18, tags=tags, response=csu
    )


async def start(pki: Pki, dev_keys: DevKeys, *, tls_of: Issued | None = None) -> HsmServer:
    tls = pki.server_tls()
    if tls_of is not None:  # an impostor: the same server, another certificate
        tls = replace(tls, cert_file=tls_of.cert, key_file=tls_of.key)
    core = SoftHsm(LMK, pan_hash_key=dev_keys.phk)
    server = HsmServer(core, ServerConfig(host="127.0.0.1", port=0, tls=tls, access=POLICY))
    await server.start()
    return server


@pytest.fixture
async def server(pki: Pki, dev_keys: DevKeys) -> AsyncIterator[HsmServer]:
    server = await start(pki, dev_keys)
    yield server
    await server.close()


def client(pki: Pki, own: Issued, port: int, *, timeout_ms: int = 2_000) -> NetworkHSM:
    tls = client_context(ca_file=pki.ca.cert, cert_file=own.cert, key_file=own.key)
    return NetworkHSM([("127.0.0.1", port)], timeout_ms=timeout_ms, tls=tls)


async def _answer(port: int, context: ssl.SSLContext | None) -> bytes:
    """Send one health request on a fresh connection; return whatever came back (b"" when the
    connection failed or closed without an answer)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(wire.encode(wire.Message(cmd.HEALTH, 1)))
        await writer.drain()
        # TLS 1.3 reports a refused client certificate on the first read, not the handshake.
        return await asyncio.wait_for(reader.read(wire.FRAME_MAX), 2)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


async def test_switch_certificate_runs_the_switch_commands(server: HsmServer, pki: Pki) -> None:
    assert await _answer(server.port, raw_context(pki.ca, pki.switch)) != b""
    async with client(pki, pki.switch, server.port) as hsm:
        assert await hsm.health() == LMK.kcv
        assert await hsm.verify_mac(TAK, DATA, mac.iso9797_alg3(TAK_CLEAR, DATA))
        assert len(await hsm.pan_hash(PAN)) == 32
        assert (await verify_published_arqc(hsm)).verified  # chip cards (EMV)
        data, value = test_reversal_word.maced(test_reversal_word.reversal(), Dialect())
        word = await hsm.reversal_word(test_reversal_word.TAK, data, value, dialect=Dialect())
        assert word is not None  # reversals: the word that gives money back
    assert server.stats.commands_not_permitted_total == 0
    assert server.stats.connections_total >= 1


@pytest.mark.parametrize("own", ["none", "rogue_switch"])
async def test_a_client_without_a_certificate_from_the_ca_is_refused_at_the_handshake(
    server: HsmServer, pki: Pki, own: str
) -> None:
    """No certificate, or one from another CA under the switch's very name: the handshake fails,
    so not one byte reaches the command decoder."""
    issued = None if own == "none" else pki.rogue_switch
    with structlog.testing.capture_logs() as logs:
        assert await _answer(server.port, raw_context(pki.ca, issued)) == b""
        await asyncio.sleep(0.05)
    assert [e["event"] for e in logs] == ["hsm_handshake_refused"]
    assert server.stats.handshakes_refused_total == 1
    if issued is not None:
        async with client(pki, issued, server.port, timeout_ms=500) as hsm:
            with pytest.raises(HsmUnavailable):
                await hsm.health()
    assert (server.stats.connections_total, server.stats.commands_total) == (0, 0)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_a_host_with_tls_1_2_or_1_3_is_admitted(
    server: HsmServer, pki: Pki, version: ssl.TLSVersion
) -> None:
    """Below 1.2 the server's minimum version refuses (and OpenSSL here will not offer it)."""
    context = raw_context(pki.ca, pki.switch)
    context.maximum_version = version
    assert await _answer(server.port, context) != b""


async def test_a_plain_tcp_client_is_refused(server: HsmServer) -> None:
    assert await _answer(server.port, None) == b""
    await asyncio.sleep(0.05)
    assert server.stats.handshakes_refused_total == 1
    assert server.stats.commands_total == 0


async def test_the_switch_cannot_manage_keys(
    server: HsmServer, pki: Pki, dev_keys: DevKeys
) -> None:
    """A stolen switch certificate gets no key out, in and no new one: each refusal has its
    error code, is logged with the client and the command (and no key), and is counted."""
    block = LMK.wrap(KeyRole.ZMK, Algorithm.TDES, bytes(range(16))).to_text()
    attempts: dict[str, Callable[[NetworkHSM], Awaitable[object]]] = {
        cmd.GENERATE_KEY: lambda hsm: hsm.generate_key(KeyRole.ZMK),
        cmd.IMPORT_KEY: lambda hsm: hsm.import_key(block, dev_keys.tmk, KeyRole.TPK),
        cmd.EXPORT_KEY: lambda hsm: hsm.export_key(dev_keys.pvk, dev_keys.tmk),
        cmd.DERIVE_PIN_DATA: lambda hsm: hsm.derive_pin_verification_data(
            dev_keys.pvk, PAN, "1234", Ibm3624Method()
        ),
        cmd.TRANSLATE_PIN: lambda hsm: hsm.translate_pin(
            bytes(8),
            PAN,
            source=TAK,
            source_format=F.ISO0,
            destination=TAK,
            destination_format=F.ISO0,
        ),
    }
    with structlog.testing.capture_logs() as logs:
        async with client(pki, pki.switch, server.port) as hsm:
            for attempt in attempts.values():
                with pytest.raises(CommandNotPermittedError) as refused:
                    await attempt(hsm)
                assert refused.value.code == "51"
            assert await hsm.health() == LMK.kcv  # still connected, still a switch
    refusals = [e for e in logs if e["event"] == "hsm_command_not_permitted"]
    assert [(e["client"], e["profile"], e["command"]) for e in refusals] == [
        ("switch-1", "switch", code) for code in attempts
    ]
    assert all(e["log_level"] == "warning" for e in refusals)
    assert block not in repr(logs)
    assert dev_keys.pvk.text not in repr(logs)
    assert server.stats.commands_not_permitted_total == len(attempts)


async def test_the_admin_manages_keys(server: HsmServer, pki: Pki) -> None:
    async with client(pki, pki.officer, server.port) as hsm:
        zmk = await hsm.generate_key(KeyRole.ZMK)
        assert await hsm.key_check_value(zmk) == zmk.kcv
    assert server.stats.commands_not_permitted_total == 0


async def test_a_certificate_from_the_ca_that_is_not_configured_may_run_nothing(
    server: HsmServer, pki: Pki
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with client(pki, pki.stranger, server.port) as hsm:
            with pytest.raises(CommandNotPermittedError):
                await hsm.health()
    connected = next(e for e in logs if e["event"] == "hsm_client_connected")
    assert (connected["client"], connected["tls_version"]) == ("stranger", "TLSv1.3")
    assert connected["sha256"] == hashlib.sha256(der(pki.stranger)).hexdigest()
    assert server.stats.commands_not_permitted_total == 1


def test_a_pin_admits_that_certificate_only(pki: Pki) -> None:
    """A CA mistake (a second certificate under the admin's CN) is not enough when pinned."""
    pin = hashlib.sha256(der(pki.officer)).digest()
    policy = AccessPolicy((ClientRule("officer", "admin", pin), ClientRule("switch-1", "switch")))
    assert policy.identify(der(pki.officer)).commands == PROFILES["admin"]
    assert policy.identify(der(pki.switch)).commands == PROFILES["switch"]
    impostor = AccessPolicy((ClientRule("officer", "admin", hashlib.sha256(b"x").digest()),))
    refused = impostor.identify(der(pki.officer))
    assert (refused.name, refused.commands) == ("officer", frozenset())


def test_the_switch_profile_leaves_out_every_key_management_command() -> None:
    key_management = {cmd.GENERATE_KEY, cmd.IMPORT_KEY, cmd.EXPORT_KEY}
    clear_pin_or_translation = {cmd.DERIVE_PIN_DATA, cmd.TRANSLATE_PIN}
    assert not PROFILES["switch"] & (key_management | clear_pin_or_translation)
    assert PROFILES["admin"] == set(cmd.COMMANDS)


async def test_the_switch_does_not_talk_to_an_impostor_hsm(pki: Pki, dev_keys: DevKeys) -> None:
    """An HSM whose certificate is not from the CA never receives a request (a PIN block)."""
    impostor = await start(pki, dev_keys, tls_of=pki.rogue_hsm)
    try:
        async with client(pki, pki.switch, impostor.port, timeout_ms=500) as hsm:
            with pytest.raises(HsmUnavailable):
                await hsm.health()
        assert impostor.stats.commands_total == 0
    finally:
        await impostor.close()


async def test_the_switch_settings_carry_the_client_certificate(
    server: HsmServer, pki: Pki, tmp_path: Path
) -> None:
    """[hsm.tls] in the switch's settings reaches the NetworkHSM it builds."""
    path = tmp_path / "switch.toml"
    path.write_text(
        "[hsm]\n"
        'backend = "network"\n'
        f'addresses = ["127.0.0.1:{server.port}"]\n'
        "[hsm.tls]\n"
        f'ca_file = "{pki.ca.cert}"\n'
        f'cert_file = "{pki.switch.cert}"\n'
        f'key_file = "{pki.switch.key}"\n',
        encoding="utf-8",
    )
    async with open_hsm(load_settings(path, env={})) as hsm:
        assert isinstance(hsm, NetworkHSM)
        assert await hsm.health() == LMK.kcv
    assert server.stats.connections_total == 1

    path.write_text(
        path.read_text(encoding="utf-8").replace(str(pki.ca.cert), "missing-ca.pem"),
        encoding="utf-8",
    )
    with pytest.raises(SettingsError) as error:
        load_settings(path, env={})
    assert (error.value.source, error.value.key) == (str(path), "hsm.tls.ca_file")
