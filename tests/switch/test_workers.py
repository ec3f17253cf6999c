"""`python -m switch serve --workers N`: the restart policy, and real parent and worker processes
on real ports and a real PostgreSQL (terminals through both workers, /metrics summed over them,
a worker SIGKILLed, SIGTERM draining both, a crash loop, the private cluster's owner)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from kiosk_sim.client import TerminalClient, network_request
from ledger.ha import HaCluster
from switch.settings import SettingsError, load_settings
from switch.workers import Exit, RestartPolicy, SlotHistory, Supervisor, after_exit
from tests.conftest import PgCluster, needs_pg_auto_failover

NOW = datetime(2026, 12, 1, 10, 15, tzinfo=UTC)
VIEWER = {"Authorization": "Bearer dev-viewer.development-only-viewer-key"}
POLICY = RestartPolicy(backoff_ms=100, backoff_max_ms=1_000, stable_ms=10_000, failed_starts_max=3)
STARTUP_S = 60.0


@pytest.mark.parametrize(
    ("history", "exited", "expected"),
    [
        # Killed after serving a long while: restarted at once, nothing counted.
        (SlotHistory(), Exit(-9, 60_000, was_ready=True), (SlotHistory(0, 0), 100)),
        # Exits soon after starting: the delay doubles each time, up to its maximum.
        (SlotHistory(), Exit(-9, 500, was_ready=True), (SlotHistory(1, 0), 100)),
        (SlotHistory(1, 0), Exit(1, 500, was_ready=True), (SlotHistory(2, 0), 200)),
        (SlotHistory(3, 0), Exit(1, 500, was_ready=True), (SlotHistory(4, 0), 800)),
        (SlotHistory(9, 0), Exit(1, 500, was_ready=True), (SlotHistory(10, 0), 1_000)),
        # A long run resets the doubling; readiness resets the failed starts.
        (SlotHistory(5, 2), Exit(-9, 20_000, was_ready=True), (SlotHistory(0, 0), 100)),
        # Exits before it was ready, three in a row: a crash loop, no restart.
        (SlotHistory(0, 0), Exit(2, 900, was_ready=False), (SlotHistory(1, 1), 100)),
        (SlotHistory(1, 1), Exit(2, 900, was_ready=False), (SlotHistory(2, 2), 200)),
        (SlotHistory(2, 2), Exit(2, 900, was_ready=False), (SlotHistory(3, 3), None)),
        # Even one that ran long counts as a failed start when it never became ready.
        (SlotHistory(0, 2), Exit(1, 20_000, was_ready=False), (SlotHistory(0, 3), None)),
    ],
)
def test_restart_policy(
    history: SlotHistory, exited: Exit, expected: tuple[SlotHistory, int | None]
) -> None:
    assert after_exit(POLICY, history, exited) == expected


@pytest.mark.parametrize(
    ("exited", "status", "clean"),
    [
        (Exit(0, 1_000, was_ready=True), "exit 0", True),
        (Exit(1, 1_000, was_ready=True), "exit 1", False),
        (Exit(-signal.SIGKILL, 1_000, was_ready=True), "signal SIGKILL", False),
        # SIGTERM before its handlers were installed: it served nothing.
        (Exit(-signal.SIGTERM, 1_000, was_ready=False), "signal SIGTERM", True),
        (Exit(-signal.SIGTERM, 1_000, was_ready=True), "signal SIGTERM", False),
    ],
)
def test_exit_status(exited: Exit, status: str, clean: bool) -> None:
    assert (exited.status, exited.stopped_cleanly) == (status, clean)


@pytest.mark.parametrize(
    ("env", "argv", "error"),
    [
        ({"SWITCH__SWITCH__WORKERS": "0"}, [], "switch.workers: expected an integer from 1 to 64"),
        ({"SWITCH__SWITCH__WORKERS": "65"}, [], "switch.workers: expected an integer from 1 to 64"),
        ({}, ["--workers", "0"], "--workers: switch.workers: expected from 1 to 64 processes"),
    ],
)
def test_a_worker_count_out_of_bounds_is_one_line(
    env: dict[str, str], argv: list[str], error: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switch", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 2
    assert error in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_the_default_is_one_worker() -> None:
    assert load_settings(None, {}).workers == 1
    with pytest.raises(SettingsError, match=r"switch\.workers"):
        load_settings(None, {"SWITCH__SWITCH__WORKERS": "many"})


class Serving:
    """`python -m switch serve` (a parent of workers, or one process) logging JSON to a file."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process, self.log_path = process, log_path

    @classmethod
    @contextlib.asynccontextmanager
    async def run(
        cls, log_path: Path, *args: str, env: Mapping[str, str]
    ) -> AsyncIterator[Serving]:
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "switch", "serve", *args,
                stdout=log_file, stderr=log_file,
                env={**os.environ, "SWITCH__LOGGING__FORMAT": '"json"', **env},
            )  # fmt: skip
        serving = cls(process, log_path)
        try:
            yield serving
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    def events(self, name: str | None = None) -> list[dict[str, object]]:
        found = []
        for line in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and name in (None, event.get("event")):
                    found.append(event)
        return found

    async def until(self, name: str, count: int = 1) -> list[dict[str, object]]:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            events = self.events(name)
            if len(events) >= count:
                return events
            assert self.process.returncode is None, self.log_path.read_text()
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {count} {name} events: {self.log_path.read_text()}")

    async def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), 60)


async def _echo(port: int, stan: int) -> TerminalClient:
    client = await TerminalClient.connect("127.0.0.1", port)
    echo = await client.request(network_request("301", stan=f"{stan:06d}", now=NOW))
    assert echo.response_code == "00"
    return client


def _served_by(serving: Serving) -> dict[str, int]:
    """Each echo's STAN and the pid of the worker that answered it (on every line it logs)."""
    return {
        str(event["stan"]): int(str(event["pid"]))
        for event in serving.events("message")
        if "pid" in event
    }


Scraped = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(admin_port: int) -> Scraped:
    async with (
        aiohttp.ClientSession(headers=VIEWER) as http,
        http.get(f"http://127.0.0.1:{admin_port}/metrics") as reply,
    ):
        assert reply.status == 200
        text = await reply.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _until_scraped(admin_port: int, name: str, value: float) -> Scraped:
    """Workers copy their connection counts in every second: wait for the sum to settle."""
    deadline = time.monotonic() + 10
    while True:
        scraped = await _scrape(admin_port)
        if scraped.get((name, ())) == value or time.monotonic() > deadline:
            return scraped
        await asyncio.sleep(0.2)


ECHOES = (("mti", "0800"), ("response_code", "00"))


async def test_two_workers_serve_one_port_survive_a_kill_and_drain_on_sigterm(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    env = {"SWITCH__LEDGER__DSN": f'"{pg_cluster.switch_dsn}"', "SWITCH__ADMIN__PORT": "0"}
    async with Serving.run(
        tmp_path / "switch.log", "--workers", "2", "--port", "0", env=env
    ) as serving:
        (starting,) = await serving.until("workers_starting")
        port, admin_port = int(str(starting["port"])), int(str(starting["admin_port"]))
        await serving.until("worker_ready", 2)
        # Connections spread over both workers (the kernel hashes each connection's
        # addresses); each echo's STAN says which worker answered it.
        clients = [await _echo(port, stan) for stan in range(1, 25)]
        await serving.until("message", 24)  # a worker logs a message after answering it
        by_stan = _served_by(serving)
        assert len(by_stan) == 24
        assert len(set(by_stan.values())) == 2
        scraped = await _until_scraped(admin_port, "switch_connections", 24)
        # Summed over the workers: their connections and what they counted.
        assert scraped[("switch_connections", ())] == 24
        assert scraped[("switch_requests_total", ECHOES)] == 24
        # Not summed: each worker's probe of the ledger and the HSM (the lowest of them).
        assert scraped[("switch_database_up", ())] == 1
        assert scraped[("switch_hsm_up", ())] == 1

        killed = by_stan["000001"]
        os.kill(killed, signal.SIGKILL)
        cut_off = [c for stan, c in enumerate(clients, 1) if by_stan[f"{stan:06d}"] == killed]
        for client in cut_off:
            await client.wait_closed_by_peer(timeout_ms=10_000)
        (exited,) = await serving.until("worker_exited")
        assert (exited["pid"], exited["status"]) == (killed, "signal SIGKILL")
        # Its terminals reconnect at once and are answered: by the other worker, or by the new
        # one once it listens.
        again = [await _echo(port, stan) for stan in range(101, 101 + len(cut_off))]
        # Its counts stay counted; its connections left the sum (the parent marked it dead),
        # and the reconnected ones are counted where they are now.
        scraped = await _until_scraped(admin_port, "switch_connections", 24)
        assert scraped[("switch_connections", ())] == 24
        assert scraped[("switch_requests_total", ECHOES)] == 24 + len(again)
        ready = await serving.until("worker_ready", 3)
        assert ready[-1]["slot"] == exited["slot"]
        assert ready[-1]["pid"] != killed

        assert await serving.stop() == 0
        for client in clients + again:
            await client.wait_closed_by_peer(timeout_ms=10_000)
            await client.close()
    (survivor,) = set(by_stan.values()) - {killed}
    statuses = {(e["pid"], e["status"]) for e in serving.events("worker_exited")[1:]}
    assert statuses == {(ready[-1]["pid"], "exit 0"), (survivor, "exit 0")}
    assert len(serving.events("stopped")) == 2
    assert serving.events("workers_stopped")[0]["exit_code"] == 0
    assert not _exists(Path(str(starting["metrics_dir"])))


async def test_a_worker_that_cannot_start_stops_the_parent_with_its_reason(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    env = {
        "SWITCH__LEDGER__DSN": f'"{pg_cluster.switch_dsn}"',
        "SWITCH__HSM__LMK_FILE": f'"{tmp_path / "missing.lmk"}"',
    }
    async with Serving.run(
        tmp_path / "switch.log", "--workers", "2", "--port", "0", env=env
    ) as serving:
        assert await asyncio.wait_for(serving.process.wait(), 60) == 2
    assert "cannot start: HSM:" in serving.log_path.read_text()
    assert not serving.events("worker_ready")
    assert serving.events("workers_stopped")[0]["exit_code"] == 2


# A worker that serves once (says it is ready on the fd the parent adds last), then dies; every
# later one dies before it is ready.
_CRASHING_WORKER = """
import os, pathlib, sys
served = pathlib.Path(sys.argv[1])
if not served.exists():
    served.touch()
    os.write(int(sys.argv[-1]), b"R")
raise SystemExit(1)
"""


async def test_a_crash_loop_is_bounded_and_reported(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [sys.executable, "-c", _CRASHING_WORKER, str(tmp_path / "served")],
        os.environ,
        count=1,
        grace_ms=1_000,
        metrics_dir=tmp_path,
        policy=RestartPolicy(backoff_ms=10, backoff_max_ms=20, failed_starts_max=3),
    )
    with structlog.testing.capture_logs() as logs:
        assert await asyncio.wait_for(supervisor.run(), 60) == 1
    events = [log["event"] for log in logs]
    # Served once, then three failed starts in a row: no fourth.
    assert events.count("worker_ready") == 1
    assert events.count("worker_started") == 4
    assert events[-1] == "worker_crash_loop"


def _exists(path: Path) -> bool:
    return path.exists()


def _postmaster_running(data_dir: Path) -> bool:
    return _exists(data_dir / "postmaster.pid")


async def _ready(admin_port: int) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{admin_port}/ready") as reply,
    ):
        return reply.status


@pytest.fixture
def private_data_dir() -> Iterator[Path]:
    # Under /tmp itself, as in tests/conftest.py: the unprivileged server user must reach it.
    root = Path(tempfile.mkdtemp(prefix="workers-pg-"))
    data_dir = root / "pg"
    root.chmod(0o755)
    subprocess.run(
        [sys.executable, "-m", "ledger", "migrate", "--data-dir", str(data_dir)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield data_dir
    finally:
        subprocess.run(
            [sys.executable, "-m", "ledger", "cluster", "--stop", "--data-dir", str(data_dir)],
            check=False, capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


async def test_the_private_cluster_outlives_its_starter_while_another_switch_uses_it(
    private_data_dir: Path, tmp_path: Path
) -> None:
    env = {"SWITCH__LEDGER__DATA_DIR": f'"{private_data_dir}"', "SWITCH__ADMIN__PORT": "0"}
    assert not _postmaster_running(private_data_dir)
    async with (
        Serving.run(tmp_path / "first.log", "--workers", "2", "--port", "0", env=env) as first,
    ):
        await first.until("worker_ready", 2)
        assert _postmaster_running(private_data_dir)  # the parent started it
        async with Serving.run(tmp_path / "second.log", "--port", "0", env=env) as second:
            (admin,) = await second.until("admin_listening")
            (listening,) = second.events("listening")
            assert await first.stop() == 0
            # Its starter is gone; the other switch still has it, and still serves.
            (left,) = first.events("cluster_left_running")
            assert int(str(left["other_clients"])) >= 1
            assert "python -m ledger cluster --stop" in str(left["stop_with"])
            assert _postmaster_running(private_data_dir)
            assert await _ready(int(str(admin["port"]))) == 200
            client = await _echo(int(str(listening["port"])), 1)
            await client.close()
            assert await second.stop() == 0
    # Nobody stopped it: the second did not start it. `ledger cluster --stop` does.
    assert _postmaster_running(private_data_dir)
    stopped = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ledger", "cluster", "--stop", "--data-dir", str(private_data_dir),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(stopped.communicate(), 120)
    assert stopped.returncode == 0
    assert b"stopped the private cluster" in output
    assert not _postmaster_running(private_data_dir)


async def test_the_parent_stops_the_private_cluster_it_started_when_nobody_else_uses_it(
    private_data_dir: Path, tmp_path: Path
) -> None:
    env = {"SWITCH__LEDGER__DATA_DIR": f'"{private_data_dir}"', "SWITCH__ADMIN__ENABLED": "false"}
    async with Serving.run(
        tmp_path / "switch.log", "--workers", "2", "--port", "0", env=env
    ) as serving:
        await serving.until("worker_ready", 2)
        assert await serving.stop(signal.SIGINT) == 0
    assert not serving.events("cluster_left_running")
    assert not _postmaster_running(private_data_dir)


@pytest.mark.slow
@needs_pg_auto_failover
async def test_ha_true_starts_the_formation_serves_through_it_and_leaves_it_running(
    ha_root: Path, tmp_path: Path
) -> None:
    ha_dir = ha_root  # the fixture stops what runs there
    env = {
        "SWITCH__LEDGER__HA": "true",
        "SWITCH__LEDGER__HA_DIR": f'"{ha_dir}"',
        "SWITCH__ADMIN__PORT": "0",
    }
    # The first start creates and starts the formation, whose ledger has no schema yet.
    async with Serving.run(tmp_path / "first.log", "--port", "0", env=env) as first:
        assert await asyncio.wait_for(first.process.wait(), 300) == 2
    said = first.log_path.read_text()
    assert f"run `python -m ledger cluster --ha --dir {ha_dir}`" in said, said
    migrated = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ledger", "cluster", "--ha", "--dir", str(ha_dir),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.wait_for(migrated.communicate(), 300)
    assert migrated.returncode == 0

    async with Serving.run(
        tmp_path / "switch.log", "--workers", "2", "--port", "0", env=env
    ) as serving:
        (starting,) = await serving.until("workers_starting")
        await serving.until("worker_ready", 2)
        client = await _echo(int(str(starting["port"])), 1)
        await client.close()
        assert await _ready(int(str(starting["admin_port"]))) == 200
        assert await serving.stop() == 0
    (formation,) = serving.events("ha_formation")
    assert formation["stop_with"] == f"python -m ledger cluster --ha --stop --dir {ha_dir}"
    cluster = HaCluster(ha_dir)
    # Left running for whoever else uses it.
    assert await asyncio.to_thread(cluster.running, "node1")
    assert await asyncio.to_thread(cluster.running, "node2")
