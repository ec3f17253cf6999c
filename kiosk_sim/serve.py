"""`make serve`: the demo ledger and a switch in the foreground, for a terminal of one's own.

The private cluster under the switch's `ledger.data_dir` is migrated and loaded with the demo
fixtures (an upsert: run it again freely). The switch then runs in this process, with the
settings `python -m switch serve` reads ($SWITCH_CONFIG, SWITCH__ variables), until Ctrl-C or
SIGTERM; the cluster stops after it. Before it starts, what a terminal integrator needs is
printed: the address, the demo terminal and its development TMK (public, as the README's table
of demo credentials shows it), a card and its PIN.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hsm.keys import StoredKey
from kiosk_sim.demo import ADA_CARD, ADA_PIN, demo_tmk
from ledger.__main__ import main as ledger_main
from ledger.errors import LedgerError
from ledger.fixtures import FixtureFile, read_fixtures
from ledger.postgres import running_cluster
from switch.__main__ import build_parser, settings_from_args
from switch.__main__ import main as switch_main
from switch.settings import Settings, SettingsError

DEMO_FIXTURES = Path("config/demo-fixtures.toml")


def banner(settings: Settings, fixtures: FixtureFile) -> str:
    """How to reach the switch with the first demo terminal (DEVELOPMENT ONLY key material)."""
    terminal = fixtures.data["terminals"][0]
    listener, admin = settings.listener, settings.admin
    tls = ", TLS" if listener.tls is not None else ""
    lines = [
        f"== the switch on the demo ledger ({settings.ledger.data_dir}); Ctrl-C stops it",
        f"   terminals connect to  {listener.host}:{listener.port} (ISO 8583{tls}; README,"
        ' "For terminal integrators")',
        f"   demo terminal         {terminal['id']}, cash in {terminal['currency']}",
        f"   its TMK (clear)       {demo_tmk(terminal['id']).hex().upper()}"
        f"  KCV {StoredKey.from_text(terminal['tmk']).kcv}  (development only: public)",
        f'   a card and its PIN    {ADA_CARD} / {ADA_PIN}  (the others: README, "Trying it'
        ' with a client of your own")',
    ]
    if admin.enabled:
        lines.append(
            f"   operations app        http://{admin.host}:{admin.port}/ (API keys: the"
            " development ones are in config/switch.toml)"
        )
    return "\n".join(lines)


def serve_demo() -> int:
    try:
        settings = settings_from_args(build_parser().parse_args(["serve"]))
        fixtures = read_fixtures(DEMO_FIXTURES)
    except (SettingsError, LedgerError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    if settings.ledger.dsn is not None:
        print(
            "serve: ledger.dsn is set, but make serve loads the demo into the private cluster"
            " under ledger.data_dir: unset it",
            file=sys.stderr,
        )
        return 2
    data_dir = str(settings.ledger.data_dir)
    try:
        # Started once for all three: the ledger commands and the switch find it running and
        # leave it so; it stops when the switch has.
        with running_cluster(settings.ledger.data_dir):
            for argv in (["migrate"], ["load", str(DEMO_FIXTURES)]):
                code = ledger_main([*argv, "--data-dir", data_dir])
                if code != 0:
                    return code
            print(banner(settings, fixtures), flush=True)
            return switch_main(["serve"])
    except LedgerError as exc:
        print(f"serve: ledger: {exc}", file=sys.stderr)
        return 2
