"""`python -m switch serve` as an operator runs it: help, bad config, signals."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiosk_sim.client import TerminalClient, network_request
from kiosk_sim.demo import free_port
from ledger.migrations import required_version
from tests.conftest import PgCluster

NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switch", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_explains_every_option() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in ("--config", "--host", "--port", "SWITCH__", "SIGTERM"):
        assert option in result.stdout


def test_bad_config_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "switch.toml"
    path.write_text("[listener]\nmax_connections = 0\n")
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: listener.max_connections: expected an integer from 1" in result.stderr


def test_bad_environment_override_names_the_key() -> None:
    result = run_cli("serve", env={"SWITCH__LISTENER__BITMAP": "bcd"})
    assert result.returncode == 2
    assert "listener.bitmap: expected one of binary, hex" in result.stderr


async def _wait_connect(port: int) -> TerminalClient:
    for _ in range(100):
        try:
            return await TerminalClient.connect("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("the switch never listened")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_the_switch_cleanly(
    signum: signal.Signals, pg_cluster: PgCluster
) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "switch", "serve", "--port", str(port)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "SWITCH__LOGGING__FORMAT": '"json"',
            "SWITCH__ADMIN__PORT": "0",
            "SWITCH__LEDGER__DSN": f'"{pg_cluster.switch_dsn}"',
        },
    )
    try:
        client = await _wait_connect(port)
        echo = await client.request(network_request("301", stan="000001", now=NOW))
        assert echo.response_code == "00"
        process.send_signal(signum)
        await client.wait_closed_by_peer(timeout_ms=10_000)
        await client.close()
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
        output = (await process.communicate())[0].decode()
    assert '"event": "shutdown_requested"' in output
    assert '"event": "stopped"' in output


def _quiet_switch_env(pg_cluster: PgCluster, **settings: str) -> dict[str, str]:
    """The switch on the test cluster, logging warnings only: what is left on stderr is what
    an operator reads when it does not start."""
    return {
        "SWITCH__LOGGING__LEVEL": "warning",
        "SWITCH__LEDGER__DSN": f'"{pg_cluster.switch_dsn}"',
        **{f"SWITCH__{name.upper()}": value for name, value in settings.items()},
    }


@pytest.mark.parametrize(
    ("taken_setting", "expected_fix"),
    [
        ("listener", "listener.port in the config file, SWITCH__LISTENER__PORT or --port"),
        ("admin", "admin.port in the config file or SWITCH__ADMIN__PORT"),
    ],
)
def test_a_port_in_use_is_one_line_naming_the_setting(
    pg_cluster: PgCluster, taken_setting: str, expected_fix: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"listener": "0", "admin": "0", taken_setting: str(port)}
        env = _quiet_switch_env(
            pg_cluster, listener__port=ports["listener"], admin__port=ports["admin"]
        )
        result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert result.stderr == (
        f"switch: cannot start: {taken_setting}.port: 127.0.0.1:{port} is already in use"
        f" (another switch?); set another with {expected_fix}\n"
    )


def test_a_listener_host_that_is_not_local_names_the_host_setting(pg_cluster: PgCluster) -> None:
    result = run_cli(
        "serve", "--host", "192.0.2.1", "--port", "0", env=_quiet_switch_env(pg_cluster)
    )
    assert result.returncode == 2
    assert result.stderr == (
        "switch: cannot start: listener.host: cannot listen on 192.0.2.1:0 (cannot assign"
        " requested address); set another with listener.host in the config file,"
        " SWITCH__LISTENER__HOST or --host\n"
    )


def test_an_unmigrated_data_directory_is_one_line() -> None:
    # Under /tmp itself, as in tests/conftest.py: the unprivileged server user must reach it.
    data_dir = Path(tempfile.mkdtemp(prefix="unmigrated-"))
    try:
        env = {
            "SWITCH__LOGGING__LEVEL": "warning",
            "SWITCH__ADMIN__PORT": "0",
            "SWITCH__LEDGER__DATA_DIR": f'"{data_dir}"',
        }
        result = run_cli("serve", "--port", "0", env=env, timeout_s=120)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert result.returncode == 2
    assert result.stderr == (
        f"switch: cannot start: ledger: schema version 0 is older than {required_version()}:"
        f" run `python -m ledger migrate --data-dir {data_dir}`\n"
    )
