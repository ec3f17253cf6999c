"""Headless Chromium driven over the Chrome DevTools protocol, with aiohttp's websocket client:
no browser download, no driver. Debian's `chromium` package provides the browser.

`Browser.launch` starts Chromium on a fresh profile with a DevTools port it picks itself,
`new_page` opens a tab, and a `Page` navigates, evaluates JavaScript and takes screenshots.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_PACKAGE = "chromium"
# Running as root needs --no-sandbox; the rest keeps a test browser quiet and off the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--window-size=1400,900",
)
START_TIMEOUT_S = 30.0


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(Exception):
    """The browser answered a command with an error."""


class Browser:
    def __init__(
        self, process: asyncio.subprocess.Process, http: aiohttp.ClientSession, ws: Any
    ) -> None:
        self._process = process
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path) -> AsyncIterator[Browser]:
        binary = chromium_binary()
        assert binary is not None, f"install Debian's {CHROMIUM_PACKAGE} package"
        process = await asyncio.create_subprocess_exec(
            binary, *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        http = aiohttp.ClientSession()
        browser = None
        try:
            port, path = await _devtools_address(profile)
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
            browser = cls(process, http, ws)
            yield browser
        finally:
            if browser is not None:
                await browser._close()
            await http.close()
            if process.returncode is None:
                process.kill()
            await process.wait()

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            waiting = self._waiting.pop(data.get("id", -1), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(data)

    async def send(
        self, method: str, session_id: str | None = None, **params: Any
    ) -> dict[str, Any]:
        command_id = next(self._ids)
        command: dict[str, Any] = {"id": command_id, "method": method, "params": params}
        if session_id is not None:
            command["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        await self._ws.send_str(json.dumps(command))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


async def _devtools_address(profile: Path) -> tuple[int, str]:
    """Chromium writes its DevTools port and browser path into the profile once it listens."""
    loop = asyncio.get_running_loop()
    end = loop.time() + START_TIMEOUT_S
    marker = profile / "DevToolsActivePort"
    while loop.time() < end:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            lines = marker.read_text().splitlines()
            return int(lines[0]), lines[1]
        await asyncio.sleep(0.1)
    raise TimeoutError("Chromium did not open its DevTools port")


class Page:
    def __init__(self, browser: Browser, session_id: str) -> None:
        self._browser = browser
        self._session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._browser.send(method, self._session_id, **params)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, *, timeout_s: float = 15.0) -> Any:
        """Until `expression` is truthy in the page; its value."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > end:
                raise TimeoutError(f"never true in the page: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        """The page as far down as its content goes, no further."""
        size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
