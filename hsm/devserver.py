"""A development HSM server in a subprocess: `python -m hsm serve` on a free loopback port with
the public development LMK, for benches and tests. Never for production (the LMK is public)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from hsm.keys import DEVELOPMENT_LMK_HEX

REPO = Path(__file__).parents[1]
_STARTUP_LINES_MAX = 50
_STARTUP_S = 20.0

Process = asyncio.subprocess.Process


class HsmDidNotStart(RuntimeError):
    """The server exited, or did not report its port, during start-up."""


async def spawn_dev_hsm(*args: str) -> tuple[Process, int]:
    """Start `python -m hsm serve --host 127.0.0.1 --port 0 ARGS` and return it and its port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "hsm", "serve", "--host", "127.0.0.1", "--port", "0", *args),
        cwd=REPO,
        env={**os.environ, "HSM_LMK": DEVELOPMENT_LMK_HEX},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    for _ in range(_STARTUP_LINES_MAX):
        line = await asyncio.wait_for(proc.stdout.readline(), _STARTUP_S)
        if line.startswith(b"HSM listening on"):
            return proc, int(line.rsplit(b":", 1)[1])
        if not line:
            break
    proc.kill()
    await proc.wait()
    raise HsmDidNotStart("the HSM server did not report its port")
