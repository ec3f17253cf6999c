"""`python -m switch serve` as an operator runs it: help, bad config, signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from kiosk_sim.client import TerminalClient, network_request
from kiosk_sim.demo import free_port
from ledger.migrations import required_version
from switch.access import DEVELOPMENT_TOKENS, Granted, Keyring, Role
from switch.settings import load_settings
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


def test_a_database_that_refuses_connections_is_one_line() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {
        "SWITCH__LOGGING__LEVEL": "warning",
        "SWITCH__ADMIN__PORT": "0",
        "SWITCH__LEDGER__DSN": f'"postgresql://ledger_switch:secret@127.0.0.1:{port}/ledger"',
    }
    result = run_cli("serve", "--port", "0", env=env, timeout_s=60)
    assert result.returncode == 2
    assert result.stderr.startswith("switch: cannot start: ledger: cannot connect to the database:")
    assert result.stderr.endswith(": check [ledger] dsn\n")
    assert result.stderr.count("\n") == 1
    assert "secret" not in result.stderr


def _minted(role: str, key_id: str) -> tuple[str, str]:
    """`keys new`: the key (from stderr) and the config lines (stdout)."""
    result = run_cli("keys", "new", "--role", role, "--id", key_id)
    assert result.returncode == 0, result.stderr
    [token] = [word for word in result.stderr.split() if word.startswith(f"{key_id}.")]
    assert token not in result.stdout
    return token, result.stdout


def test_keys_new_prints_the_key_once_and_the_lines_that_admit_it(tmp_path: Path) -> None:
    token, lines = _minted("auditor", "alice")
    path = tmp_path / "switch.toml"
    path.write_text(lines)
    [key] = load_settings(path).admin.keys
    assert (key.key_id, key.role) == ("alice", Role.AUDITOR)
    assert Keyring([key]).authorize(f"Bearer {token}", frozenset({Role.AUDITOR})) == Granted(key)
    # A second key of the same name is another key.
    other, _ = _minted("auditor", "alice")
    assert not key.matches(other)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--role", "root"], "invalid choice: 'root'"),
        (["--role", "viewer", "--id", "a.b"], "a key id is 1 to 63 letters"),
        ([], "the following arguments are required: --role"),
    ],
)
def test_keys_new_refuses_a_bad_role_or_id(args: list[str], error: str) -> None:
    result = run_cli("keys", "new", *args)
    assert result.returncode == 2
    assert error in result.stderr
    assert result.stdout == ""


async def _until_up(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{url}/health") as reply:
                if reply.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError("the operations app never answered")


async def test_a_running_switch_admits_a_minted_key_to_its_role_only(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    token, lines = _minted("auditor", "audit-team")
    config = tmp_path / "switch.toml"
    config.write_text(lines)
    admin_port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "switch", "serve", "--config", str(config), "--port", "0"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={
            **os.environ,
            "SWITCH__ADMIN__PORT": str(admin_port),
            "SWITCH__LEDGER__DSN": f'"{pg_cluster.switch_dsn}"',
            "SWITCH__LEDGER__AUDIT_DSN": f'"{pg_cluster.owner_dsn}"',
        },
    )
    url = f"http://127.0.0.1:{admin_port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            await _until_up(http, url)
            async with http.get(f"{url}/journal?limit=2") as reply:
                assert reply.status == 200
                assert len((await reply.json())["records"]) <= 2
            async with http.get(f"{url}/metrics") as reply:
                assert reply.status == 403
            # The development keys are not there once keys are configured.
            development = {"Authorization": f"Bearer {DEVELOPMENT_TOKENS[Role.AUDITOR]}"}
            async with http.get(f"{url}/journal", headers=development) as reply:
                assert reply.status == 401
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
