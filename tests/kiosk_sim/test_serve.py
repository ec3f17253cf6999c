"""`make serve`: the demo ledger provisioned, a switch in the foreground a terminal can use."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiosk_sim.client import TerminalClient
from kiosk_sim.demo import ADA_CARD, ADA_PIN, demo_tmk, free_port
from kiosk_sim.epp import Epp
from kiosk_sim.serve import serve_demo
from kiosk_sim.terminal import Terminal

ROOT = Path(__file__).resolve().parents[2]
START_WITHIN_S = 120.0


async def _output_until(stream: asyncio.StreamReader, marker: str) -> str:
    seen = []
    while line := (await stream.readline()).decode():
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"the output ended before {marker!r}:\n{''.join(seen)}")


async def test_serve_loads_the_demo_and_a_terminal_can_transact() -> None:
    # Under /tmp itself, as in tests/conftest.py: the unprivileged server user must reach it.
    data_dir = Path(tempfile.mkdtemp(prefix="serve-"))
    port, admin_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "kiosk_sim", "serve"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "SWITCH__LOGGING__FORMAT": '"json"',
            "SWITCH__LISTENER__PORT": str(port),
            "SWITCH__ADMIN__PORT": str(admin_port),
            "SWITCH__LEDGER__DATA_DIR": f'"{data_dir}"',
        },
    )
    assert process.stdout is not None
    try:
        output = await asyncio.wait_for(
            _output_until(process.stdout, '"event": "listening"'), START_WITHIN_S
        )
        assert "loaded 3 customers, 6 accounts, 5 cards, 3 terminals" in output
        assert f"terminals connect to  127.0.0.1:{port}" in output
        assert "demo terminal         KIOSK001, cash in EUR" in output
        assert f"its TMK (clear)       {demo_tmk('KIOSK001').hex().upper()}  KCV B906D5" in output
        client = await TerminalClient.connect("127.0.0.1", port)
        kiosk = Terminal(
            "KIOSK001",
            Epp(demo_tmk("KIOSK001")),
            client,
            clock=lambda: datetime.now(UTC),
            rng=random.Random(1),
        )
        try:
            assert (await kiosk.sign_on()).code == "00"
            assert (await kiosk.change_keys()).code == "00"
            inquiry = await kiosk.send(kiosk.balance_inquiry(ADA_CARD, ADA_PIN))
            assert inquiry.code == "00"
        finally:
            await client.close()
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        assert not (data_dir / "postmaster.pid").exists(), "the cluster stops with the switch"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_serve_refuses_a_configured_dsn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SWITCH__LEDGER__DSN", '"postgresql://elsewhere/ledger"')
    assert serve_demo() == 2
    assert capsys.readouterr().err == (
        "serve: ledger.dsn is set, but make serve loads the demo into the private cluster under"
        " ledger.data_dir: unset it\n"
    )
