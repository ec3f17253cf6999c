"""`make demo`: the whole product on one machine, the way an operator runs it.

A fresh private PostgreSQL cluster under .var/demo/pg is migrated and loaded with
config/demo-fixtures.toml by `python -m ledger`; `python -m hsm serve` and `python -m switch
serve` run as their own processes (the switch starts the embedded cluster itself, since no DSN
is configured). Scripted terminals then walk through every flow and a short load phase runs;
the switch is stopped and `python -m ledger audit verify` checks the journal. Everything the
demo starts, it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from hsm.devkeys import make_dev_keys
from hsm.keys import DEVELOPMENT_LMK, Lmk
from kiosk_sim import load, scrape
from kiosk_sim.chip import ChipCard, ChipProfile, IssuerAuthentication
from kiosk_sim.client import TerminalClient
from kiosk_sim.epp import Epp
from kiosk_sim.population import LedgerView, build, provision
from kiosk_sim.report import Report
from kiosk_sim.terminal import Exchange, Terminal
from ledger.postgres import running_cluster

Say = Callable[[str], None]
WORK_DIR = Path(".var/demo")
STARTUP_TIMEOUT_S = 60.0
LOAD_SECONDS = 12.0
LOAD_TERMINALS = 6
# A tool's output beyond this many lines shows its end only; the terminal report (a header and
# a line per terminal: 3 scripted, 6 simulated) fits whole.
OUTPUT_LINES_MAX = 20

# Demo cards and their PINs (config/demo-fixtures.toml; development only).
ADA_CARD, ADA_PIN = "4111111111111111", "1234"
BOB_CARD, BOB_PIN = "5555555555554444", "4321"
CHEN_CARD, CHEN_PIN = "4000056655665556", "1111"
BLOCKED_CARD, BLOCKED_PIN = "4012888888881881", "2222"
CHIP_CARD, CHIP_PIN, CHIP_PSN = "4761739001010010", "1234", "01"  # Ada's, Visa CVN 18
CHIP_CVN = 18
EUR, USD = "978", "840"
# The load phase's sessions: the usual mix with chip cards in it.
LOAD_MIX = {
    **load.DEFAULT_MIX,
    "chip_withdrawal": 4,
    "chip_replay": 1,
    "bad_arqc": 1,
    "fallback": 1,
}
# Its kiosks have cassettes; now and then a dispenser jams or rejects a note; one kiosk
# miscounts, so that its end-of-day balancing must be caught (95).
LOAD_FAULTS = {"jam": 0.02, "reject": 0.01, "miscount": 1}
# The cassette the operator reloads after the scripted flows took notes from it.
REPLENISHED_TERMINAL, REPLENISHED_CASSETTE, REPLENISHED_NOTES = "KIOSK001", 2, 400


def demo_tmk(terminal_id: str) -> bytes:
    """A demo terminal's clear TMK, as its EPP would hold it (DEVELOPMENT ONLY)."""
    keys = make_dev_keys(Lmk(DEVELOPMENT_LMK), seed=f"demo {terminal_id}".encode())
    return bytes.fromhex(keys.tmk_clear_hex)


def demo_chip_card() -> ChipCard:
    """Ada's chip card, personalised from the demo IMK-AC (DEVELOPMENT ONLY, public)."""
    keys = make_dev_keys(Lmk(DEVELOPMENT_LMK), seed=b"demo bank")
    imk = bytes.fromhex(keys.imk_ac_clear_hex)
    return ChipCard(ChipProfile.personalise(imk, CHIP_CARD, CHIP_PSN, CHIP_CVN))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Ports:
    switch: int
    admin: int
    hsm: int


def run_step(say: Say, title: str, args: list[str]) -> str:
    say(f"$ python -m {' '.join(args)}")
    result = subprocess.run(  # noqa: S603 - our own interpreter and modules
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, check=False
    )
    output = (result.stdout + result.stderr).strip()
    for line in output.splitlines()[-OUTPUT_LINES_MAX:]:
        say(f"    {line}")
    if result.returncode != 0:
        raise RuntimeError(f"{title} failed with exit code {result.returncode}")
    return output


@dataclass(frozen=True)
class _Anchoring:
    path: Path
    publish_args: list[str]
    verify_args: list[str]


def _anchoring(say: Say) -> _Anchoring:
    """A development key pair for signing anchors (made once), and the anchors file: new per
    run, as the journal's chains are checked from their first block."""
    private, public = WORK_DIR / "anchor-dev.key", WORK_DIR / "anchor-dev.pub"
    if not private.exists():
        run_step(say, "anchor key", ["ledger", "anchors", "keygen", "--private", str(private),
                                     "--public", str(public)])  # fmt: skip
    path = WORK_DIR / "anchors.jsonl"
    path.unlink(missing_ok=True)
    return _Anchoring(
        path,
        ["--anchors", str(path), "--key", str(private)],
        ["--anchors", str(path), "--anchor-key", str(public)],
    )


def _first_anchor(path: Path) -> None:
    """The publisher has the cluster up and has signed the heads once."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no anchor in {path} after {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def _export_journal(path: Path, data_dir: str, say: Say) -> None:
    args = ["ledger", "audit", "export", "--from", "2000-01-01", "--to", "2100-01-01",
            "--format", "jsonl", "--data-dir", data_dir]  # fmt: skip
    say(f"$ python -m {' '.join(args)} > {path}")
    with path.open("w") as out:
        subprocess.run(  # noqa: S603 - our own interpreter and modules
            [sys.executable, "-m", *args], stdout=out, timeout=300, check=True
        )


@contextlib.contextmanager
def process(
    args: list[str], log_path: Path, env: dict[str, str], say: Say
) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log_file:
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, "-m", *args], stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        say(f"stopped {args[0]} (exit code {code}; log {log_path})")


async def wait_listening(port: int, child: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{name} exited with code {child.returncode} during start-up")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"{name} did not listen on port {port} within {STARTUP_TIMEOUT_S:.0f}s")


class Narrator:
    def __init__(self, say: Say) -> None:
        self.say = say

    def show(self, terminal: Terminal, what: str, exchange: Exchange, note: str = "") -> Exchange:
        code = exchange.code
        extra = f"  auth {exchange.response.get(38)}" if exchange.response.get(38) else ""
        mac = {True: "MAC ok", False: "MAC BAD", None: "no MAC"}[exchange.response_mac_ok]
        outcome = f"{exchange.response.mti} {code} {DESCRIPTIONS.get(code, '')}{extra}"
        self.say(f"  {terminal.terminal_id}  {what:<38} -> {outcome}  [{mac}]{note}")
        return exchange


DESCRIPTIONS = {
    "00": "approved",
    "05": "do not honour",
    "13": "invalid amount",
    "51": "insufficient funds",
    "55": "incorrect PIN",
    "57": "not permitted to cardholder",
    "58": "not permitted to terminal",
    "61": "exceeds amount limit",
    "62": "restricted card",
    "63": "security violation",
    "65": "exceeds frequency limit",
    "75": "PIN tries exceeded",
    "91": "unavailable",
}


async def connect(terminal_id: str, port: int, seed: int) -> Terminal:
    client = await TerminalClient.connect("127.0.0.1", port)
    return Terminal(
        terminal_id, Epp(demo_tmk(terminal_id)), client, clock=now, rng=random.Random(seed)
    )


async def scripted(port: int, say: Say) -> None:
    """Every flow once, narrated."""
    n = Narrator(say)
    kiosk = await connect("KIOSK001", port, seed=1)
    try:
        n.show(kiosk, "sign-on (0800, F70 001)", await kiosk.sign_on())
        change = await kiosk.change_keys()
        data = change.response.get(48) or ""
        n.show(
            kiosk,
            "key change (0800, F70 161)",
            change,
            f"  TPK KCV {data[32:38]}, TAK KCV {data[70:76]}",
        )
        n.show(
            kiosk,
            "balance inquiry, Ada",
            await kiosk.send(kiosk.balance_inquiry(ADA_CARD, ADA_PIN)),
        )
        withdrawal = kiosk.withdrawal(ADA_CARD, ADA_PIN, 10_000)
        paid = await kiosk.send(withdrawal)
        notes = ", ".join(f"{e.notes} x {e.denomination_minor // 100}" for e in paid.notes)
        first = n.show(kiosk, "withdraw EUR 100.00, Ada", paid, f"  notes (F121): {notes}")
        again = await kiosk.send(withdrawal)
        n.show(
            kiosk,
            "same 0200 again (duplicate)",
            again,
            "  same auth code: stored response"
            if again.response.get(38) == first.response.get(38)
            else "",
        )
        n.show(
            kiosk,
            "withdraw EUR 60.00, Ada, wrong PIN",
            await kiosk.send(kiosk.withdrawal(ADA_CARD, "9999", 6_000)),
        )
        partial = await kiosk.send(kiosk.withdrawal(ADA_CARD, ADA_PIN, 8_000))
        n.show(kiosk, "withdraw EUR 80.00, Ada", partial)
        n.show(
            kiosk,
            "reversal 0420: only EUR 50.00 dispensed",
            await kiosk.send(kiosk.reversal(partial.request, dispensed_minor=5_000)),
        )
        n.show(
            kiosk,
            "transfer EUR 250.00 savings->checking",
            await kiosk.send(
                kiosk.transfer(ADA_CARD, ADA_PIN, 25_000, from_account="10", to_account="20")
            ),
        )
        n.show(
            kiosk,
            "withdraw EUR 125.00 (no EUR 5 notes)",
            await kiosk.send(kiosk.withdrawal(ADA_CARD, ADA_PIN, 12_500)),
            "  (the cassettes cannot make it)",
        )
        n.show(
            kiosk,
            "withdraw EUR 600.00, Ada (limit 500)",
            await kiosk.send(kiosk.withdrawal(ADA_CARD, ADA_PIN, 60_000)),
        )
        n.show(
            kiosk,
            "withdraw, blocked card",
            await kiosk.send(kiosk.withdrawal(BLOCKED_CARD, BLOCKED_PIN, 2_000)),
        )
        n.show(
            kiosk,
            "balance inquiry, Ada",
            await kiosk.send(kiosk.balance_inquiry(ADA_CARD, ADA_PIN)),
        )
        tampered = kiosk.withdrawal(ADA_CARD, ADA_PIN, 1_000).replace({4: "000000100000"})
        n.show(
            kiosk,
            "0200 altered after MACing",
            await kiosk.send(tampered),
            "  (security event, audited)",
        )
        await chip(kiosk, n)
    finally:
        await kiosk.client.close()
    usd = await connect("KIOSK003", port, seed=3)
    try:
        await usd.sign_on()
        await usd.change_keys()
        n.show(
            usd,
            "withdraw USD 200.00, Bob",
            await usd.send(usd.withdrawal(BOB_CARD, BOB_PIN, 20_000, currency=USD)),
        )
    finally:
        await usd.client.close()


async def chip(kiosk: Terminal, n: Narrator) -> None:
    """Ada's chip card: its ARQC verified and the ARPC checked by the card; a replay of it, and
    a read of its stripe, refused."""
    card = demo_chip_card()  # the demo's ledger is new: the card's counter starts at 0
    cryptogram = card.generate_arqc(kiosk.terminal_data(4_000))
    exchange = await kiosk.send(kiosk.chip_withdrawal(cryptogram, CHIP_PIN, 4_000))
    verdict = card.authenticate_issuer(cryptogram, exchange.response.get(55))
    n.show(kiosk, f"chip withdraw EUR 40.00, ATC {cryptogram.atc}", exchange, _arpc_note(verdict))
    if exchange.approved and not verdict.approve:
        reversal = kiosk.chip_reversal(exchange.request, card.decline(cryptogram))
        n.show(kiosk, "reversal 0420 with the card's AAC", await kiosk.send(reversal))
    # As when the 0210 was lost: the stored answer, with the same tag 91, and no second debit.
    again = await kiosk.send(exchange.request)
    verdict = card.authenticate_issuer(cryptogram, again.response.get(55))
    n.show(kiosk, "same chip 0200 again (answer lost)", again, _arpc_note(verdict))
    replay = kiosk.chip_withdrawal(cryptogram, CHIP_PIN, 4_000)
    n.show(kiosk, "the same chip data again (replay)", await kiosk.send(replay), "  (audited)")
    stripe = kiosk.stripe_withdrawal(
        CHIP_CARD, CHIP_PIN, 4_000, expiry_yymm="2912", service_code="201"
    )
    n.show(kiosk, "chip card read by its stripe", await kiosk.send(stripe), "  (no fallback)")


def _arpc_note(verdict: IssuerAuthentication) -> str:
    if verdict.approve:
        return "  (card checked the ARPC in tag 91: issuer approves)"
    return "  (ARPC FAILED: the card declines)"


async def load_phase(port: int, data_dir: Path, say: Say) -> Report:
    """Simulated kiosks with a seeded population of their own, end state checked after."""
    population = build(seed=2026, customers=24, terminals=LOAD_TERMINALS, cash=True)
    plan = load.Plan(
        terminals=LOAD_TERMINALS,
        seed=2026,
        duration_s=LOAD_SECONDS,
        mix=LOAD_MIX,
        faults=LOAD_FAULTS,
        balance=True,
    )
    with running_cluster(data_dir) as cluster:  # the switch's: reused, left running
        await provision(cluster.owner_dsn, population)

        def progress(report: Report, elapsed_s: float) -> None:
            if int(elapsed_s) % 3 == 0:
                rate = report.answered / elapsed_s
                p99_ms = report.latency.percentile_us(99) / 1000
                answered = report.answered
                line = f"{elapsed_s:4.1f}s  {answered:6d} answered  {rate:7.1f}/s"
                say(f"  {line}  p99 {p99_ms:.1f} ms")

        return await load.run(
            plan,
            population,
            "127.0.0.1",
            port,
            ledger=LedgerView(cluster.owner_dsn),
            progress=progress,
        )


def end_of_day(report: Report, say: Say) -> None:
    """Each simulated kiosk's 0500 and the host's answer; the miscounting one's must be 95 (the
    report above lists what differs, with the host's figures)."""
    for result in report.balancing or ():
        verdict = "balanced" if result.balanced else "reconcile error"
        if result.terminal_id == report.miscounting:
            verdict += ": miscounted on purpose, caught" if not result.balanced else ": MISSED"
        say(
            f"  {result.terminal_id}  0500 for {result.business_date_mmdd}"
            f" -> 0510 {result.code} {verdict}"
        )


async def admin_view(port: int, say: Say) -> None:
    async with aiohttp.ClientSession(headers=scrape.admin_headers()) as http:
        async with http.get(f"http://127.0.0.1:{port}/terminals") as reply:
            fleet = await reply.json()
        async with http.get(f"http://127.0.0.1:{port}/ready") as reply:
            ready = await reply.json()
    say(f"  /ready: {ready['checks']}")
    for t in fleet["terminals"]:
        rate = t["approval_rate"]
        say(f"  /terminals: {t['terminal_id']}  requests {t['requests']:5d}  approval rate {rate}")
    means = scrape.mean_ms_between("", await scrape.fetch_metrics(port))
    request_ms = means.pop(scrape.REQUEST, 0.0)
    steps = ", ".join(f"{step} {ms:.1f}" for step, ms in means.items())
    say(f"  /metrics: mean financial request {request_ms:.1f} ms; per step (ms): {steps}")


def replenishment(data_dir: str, say: Say) -> None:
    """The operator reloads the cassette the scripted withdrawals took notes from."""
    args = ["ledger", "cash", "replenish", "--terminal", REPLENISHED_TERMINAL,
            "--cassette", str(REPLENISHED_CASSETTE), "--notes", str(REPLENISHED_NOTES),
            "--by", "demo", "--data-dir", data_dir]  # fmt: skip
    run_step(say, "replenish", args)


def run_demo(say: Say = print) -> int:
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    data_dir = str(WORK_DIR / "pg")
    ports = Ports(free_port(), free_port(), free_port())
    started = time.monotonic()
    try:
        say("== provisioning: a fresh private PostgreSQL cluster, migrated and loaded")
        run_step(say, "migrate", ["ledger", "migrate", "--data-dir", data_dir])
        run_step(
            say, "load", ["ledger", "load", "config/demo-fixtures.toml", "--data-dir", data_dir]
        )
        env = {
            **os.environ,
            "SWITCH__LOGGING__FORMAT": '"json"',
            "SWITCH__LISTENER__PORT": str(ports.switch),
            "SWITCH__ADMIN__PORT": str(ports.admin),
            "SWITCH__HSM__BACKEND": '"network"',
            "SWITCH__HSM__ADDRESSES": f'["127.0.0.1:{ports.hsm}"]',
            "SWITCH__LEDGER__DATA_DIR": f'"{data_dir}"',
        }
        say(f"== starting the HSM (port {ports.hsm}) and the switch (port {ports.switch})")
        say(f"   operations app: http://127.0.0.1:{ports.admin}/ (API keys: config/switch.toml)")
        anchors = _anchoring(say)
        publisher = ["ledger", "anchors", "publish", *anchors.publish_args, "--data-dir", data_dir]
        say("== signing the journal's chain heads outside the database, every second")
        with (
            process(
                ["hsm", "serve", "--port", str(ports.hsm)], WORK_DIR / "hsm.log", env, say
            ) as hsm,
            process(publisher, WORK_DIR / "anchors.log", env, say),
        ):
            # The publisher starts the private cluster; it stops it last, after the switch.
            asyncio.run(wait_listening(ports.hsm, hsm, "the HSM"))
            _first_anchor(anchors.path)
            with process(["switch", "serve"], WORK_DIR / "switch.log", env, say) as switch:
                asyncio.run(wait_listening(ports.switch, switch, "the switch"))
                say("== every flow, one terminal at a time")
                asyncio.run(scripted(ports.switch, say))
                say("== cash: the operator replenishes a cassette")
                replenishment(data_dir, say)
                say(f"== load: {LOAD_TERMINALS} simulated kiosks for {LOAD_SECONDS:.0f} s")
                report = asyncio.run(load_phase(ports.switch, Path(data_dir), say))
                say(report.to_text())
                say("== end of day: every kiosk balances its counters (0500 -> 0510)")
                end_of_day(report, say)
                say("== the operations app")
                asyncio.run(admin_view(ports.admin, say))
        if report.differences:
            raise RuntimeError(f"{len(report.differences)} end-state differences")
        say("== auditors: the journal and the books, against the signed anchors")
        run_step(
            say, "audit verify",
            ["ledger", "audit", "verify", *anchors.verify_args, "--data-dir", data_dir],
        )  # fmt: skip
        export = WORK_DIR / "journal.jsonl"
        _export_journal(export, data_dir, say)
        run_step(
            say, "audit verify-export",
            ["ledger", "audit", "verify-export", str(export), *anchors.verify_args],
        )  # fmt: skip
        run_step(say, "report", ["ledger", "report", "terminals", "--data-dir", data_dir])
    except Exception as exc:
        say(f"demo failed: {exc}")
        return 1
    say(f"demo finished in {time.monotonic() - started:.0f} s; logs in {WORK_DIR}/")
    return 0
