"""The fleet page in a real browser (headless Chromium over the DevTools protocol), as an
operator uses it: the demo fleet with its never-seen terminal from the first load, live
updates without a reload, a firing alert acknowledged from the page, and a banner when the
switch goes away.

Set FLEET_SCREENSHOT=docs/fleet-page.png to keep the screenshot the README shows.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from hsm.devkeys import DevKeys
from kiosk_sim.demo import ADA_CARD, ADA_PIN, demo_tmk
from ledger.fixtures import load_fixtures, read_fixtures
from ledger.settings import DEVELOPMENT_PAN_HASH_KEY
from tests.ledger.factory import World
from tests.ops.cdp import CHROMIUM_PACKAGE, Browser, Page, chromium_binary
from tests.ops.conftest import OpsDatabase
from tests.ops.stack import TOKEN, OpsStack, ops_stack, webhook_receiver

pytestmark = pytest.mark.skipif(
    chromium_binary() is None,
    reason=f"needs Debian's {CHROMIUM_PACKAGE} package: apt-get install chromium chromium-driver",
)
DEMO_FIXTURES = Path(__file__).parents[2] / "config" / "demo-fixtures.toml"
DEMO_TERMINALS = ["KIOSK001", "KIOSK002", "KIOSK003"]


async def load_demo(db: OpsDatabase) -> World:
    owner = await asyncpg.connect(db.owner_dsn)
    try:
        fixtures = read_fixtures(DEMO_FIXTURES)
        await load_fixtures(
            owner, fixtures.data, pan_hash_key=DEVELOPMENT_PAN_HASH_KEY, timeout_ms=30_000
        )
    finally:
        await owner.close()
    return World(terminals=list(DEMO_TERMINALS))


@pytest.fixture
async def demo(ops_db: OpsDatabase, dev_keys: DevKeys) -> AsyncIterator[OpsStack]:
    world = await load_demo(ops_db)
    async with ops_stack(ops_db, dev_keys, world=world, tmk=demo_tmk) as stack:
        yield stack


@pytest.fixture
async def page(demo: OpsStack, tmp_path: Path) -> AsyncIterator[Page]:
    async with Browser.launch(tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.navigate(demo.admin_url + "/")
        yield page


def state_of(terminal: str) -> str:
    """JavaScript: the state shown in a terminal's row ('' while it has none). Parenthesised:
    `x || '' === 'up'` would be `x || ('' === 'up')`, true as soon as the row exists."""
    return (
        f"((document.querySelector('#rows tr[data-terminal={json.dumps(terminal)}] .state')"
        " || {}).textContent || '')"
    )


async def sign_in(page: Page) -> None:
    await page.evaluate(
        f"document.getElementById('token').value = {json.dumps(TOKEN)};"
        " document.getElementById('load').click(); true"
    )
    await page.wait_for("document.querySelectorAll('#rows tr').length === 3")


async def test_the_page_is_live_from_the_first_load_and_says_when_the_switch_is_gone(
    demo: OpsStack, page: Page
) -> None:
    kiosk = await demo.terminal(0)
    assert (await kiosk.send(kiosk.balance_inquiry(ADA_CARD, ADA_PIN))).code == "00"
    await page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    await sign_in(page)
    await page.wait_for(f"{state_of('KIOSK001')} === 'up'")
    assert await page.evaluate(state_of("KIOSK003")) == "never seen"
    locations = await page.evaluate(
        "[...document.querySelectorAll('#rows tr')].map(r => r.children[1].textContent)"
    )
    assert locations == [
        "Central Station, hall B",
        "Airport, arrivals level",
        "Harbour ferry terminal",
    ]
    seen = "document.querySelector('#rows tr[data-terminal=\"KIOSK001\"] .seen').textContent"
    assert (await page.wait_for(seen)).endswith(" s ago")
    codes = "document.querySelector('#rows tr[data-terminal=\"KIOSK001\"] .codes').textContent"
    await page.wait_for(f"{codes} === '00 × 1'")  # its traffic, flushed a moment later
    cash = "document.querySelector('#rows tr[data-terminal=\"KIOSK003\"] .cash').textContent"
    assert await page.evaluate(cash) == "ok: 1·100 2·300"  # the demo's USD cassettes
    summary = "document.getElementById('summary-terminals-up').querySelector('b').textContent"
    assert await page.evaluate(summary) == "1"
    assert await page.evaluate("document.getElementById('banner').hidden")

    await demo.terminal(1)  # KIOSK002 signs on: the page shows it without a reload
    await page.wait_for(f"{state_of('KIOSK002')} === 'up'")
    await page.wait_for(f"{summary} === '2'")
    assert await page.evaluate("window.loadedOnce === true")

    await demo.stop_admin()  # the switch stops answering
    banner = await page.wait_for(
        "!document.getElementById('banner').hidden && document.getElementById('banner').textContent"
    )
    assert "The switch cannot be reached." in banner
    assert "Showing data from" in banner
    assert await page.evaluate("document.body.classList.contains('stale')")


async def test_a_firing_alert_is_shown_and_acknowledged_from_the_page(
    ops_db: OpsDatabase, dev_keys: DevKeys, tmp_path: Path
) -> None:
    world = await load_demo(ops_db)
    async with (
        webhook_receiver() as receiver,
        ops_stack(ops_db, dev_keys, world=world, tmk=demo_tmk, receiver=receiver) as demo,
        Browser.launch(tmp_path / "profile") as browser,
    ):
        kiosk = await demo.terminal(0)
        dying = await demo.terminal(1)
        assert (await kiosk.send(kiosk.balance_inquiry(ADA_CARD, ADA_PIN))).code == "00"
        await dying.client.close()  # KIOSK002 dies
        page = await browser.new_page()
        await page.navigate(demo.admin_url + "/")
        await sign_in(page)
        row = "document.querySelector('#alerts tr')"
        await page.wait_for(
            f"{row} && {row}.querySelector('.alert-state').textContent === 'firing'"
        )
        assert await page.evaluate(f"{row}.children[2].textContent") == "KIOSK002"
        assert await page.evaluate(f"{row}.children[1].textContent") == "terminal_offline"
        assert await page.evaluate(state_of("KIOSK002")) == "down"
        await _keep_screenshot(page, tmp_path)
        await page.evaluate(f"{row}.querySelector('button.ack').click(); true")
        await page.wait_for(f"{row}.querySelector('.alert-state').textContent === 'acknowledged'")
        assert await page.evaluate(f"{row}.lastChild.textContent") == "by operator"
        [alert] = await demo.alerts(rule="terminal_offline")
        assert (alert["state"], alert["acknowledged_by"]) == ("acknowledged", "operator")
        notified = await receiver.wait_for("terminal_offline", "acknowledged", "KIOSK002")
        assert notified["alert"]["alert_id"] == alert["alert_id"]


async def _keep_screenshot(page: Page, tmp_path: Path) -> None:
    target = os.environ.get("FLEET_SCREENSHOT")
    path = Path(target) if target else tmp_path / "fleet-page.png"
    await page.screenshot(path)
    assert path.read_bytes().startswith(b"\x89PNG")
