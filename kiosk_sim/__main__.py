"""`python -m kiosk_sim`: the terminal simulator."""

from __future__ import annotations

import argparse
import sys

from kiosk_sim.demo import run_demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kiosk_sim", description="Kiosk terminal simulator for the switch."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="start the switch and drive it with scripted terminals (what `make demo` runs)",
        description="Start the switch as its own process, drive it with a scripted terminal "
        "over TCP, print each exchange, then stop everything it started.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    assert args.command == "demo"
    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
