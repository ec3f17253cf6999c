"""`make demo`: start the switch as its own process and drive it with a scripted terminal.

Everything the demo starts, it stops; it finishes on its own in well under a minute.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kiosk_sim.client import TerminalClient, network_request
from switch.iso8583 import Message

DEMO_TERMINAL_ID = "KIOSK001"
STARTUP_TIMEOUT_S = 15.0
NETWORK_NAMES = {"001": "sign-on", "002": "sign-off", "301": "echo", "161": "key change"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_switch(port: int, admin_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SWITCH__LOGGING__FORMAT": '"json"',
        "SWITCH__ADMIN__PORT": str(admin_port),
    }
    with log_path.open("wb") as log_file:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "switch", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the switch exited with code {process.returncode} during start-up")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"the switch did not listen on port {port} within {STARTUP_TIMEOUT_S:.0f}s")


async def exchange(client: TerminalClient, request: Message, say: Callable[[str], None]) -> Message:
    name = NETWORK_NAMES.get(request.network_code or "", request.mti)
    started = time.perf_counter()
    response = await client.request(request)
    elapsed_ms = (time.perf_counter() - started) * 1000
    say(
        f"  {DEMO_TERMINAL_ID}  {request.mti} {name:<10} STAN {request.stan}"
        f"  ->  {response.mti} F39={response.response_code}  ({elapsed_ms:.1f} ms)"
    )
    return response


async def drive(port: int, say: Callable[[str], None]) -> None:
    client = await TerminalClient.connect("127.0.0.1", port)
    try:
        now = datetime.now(UTC)
        script = [
            network_request("001", stan="000001", now=now, terminal_id=DEMO_TERMINAL_ID),
            network_request("301", stan="000002", now=now, terminal_id=DEMO_TERMINAL_ID),
            network_request("002", stan="000003", now=now, terminal_id=DEMO_TERMINAL_ID),
        ]
        for request in script:
            response = await exchange(client, request, say)
            if response.response_code != "00":
                raise RuntimeError(f"{request.mti} was declined with {response.response_code}")
    finally:
        await client.close()


def stop_switch(process: subprocess.Popen[bytes], say: Callable[[str], None]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    say(f"switch stopped (exit code {code})")
    return code


def run_demo(say: Callable[[str], None] = print) -> int:
    log_path = Path(".var/demo/switch.log")
    port, admin_port = free_port(), free_port()
    say(f"starting the switch on 127.0.0.1:{port} (log: {log_path})")
    say(f"operations app: http://127.0.0.1:{admin_port}/ (development token in config/switch.toml)")
    process = start_switch(port, admin_port, log_path)
    try:
        asyncio.run(wait_listening(port, process))
        say("switch is listening; one terminal signs on, echoes and signs off:")
        asyncio.run(drive(port, say))
    except Exception as exc:
        say(f"demo failed: {exc}")
        stop_switch(process, say)
        return 1
    code = stop_switch(process, say)
    events = len(log_path.read_text().splitlines())
    say(f"the switch logged {events} events (JSON lines, one per message) to {log_path}")
    return 0 if code == 0 else 1
