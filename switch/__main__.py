"""`python -m switch serve`: run the transaction switch."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import uvloop

from switch.app import StartupError, serve
from switch.logging import configure_logging
from switch.settings import Settings, SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m switch",
        description="ATM and kiosk transaction switch: ISO 8583 terminals over TCP.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve",
        help="run the switch until SIGTERM or SIGINT",
        description=(
            "Run the switch. Settings come from --config (TOML; see config/switch.toml for "
            "every key and its default), then SWITCH__<TABLE>__<KEY> environment variables, "
            "then --host/--port. SIGTERM or SIGINT stops accepting, lets in-flight requests "
            "finish within shutdown.grace_ms, and exits."
        ),
    )
    serve_cmd.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("SWITCH_CONFIG"),
        metavar="PATH",
        help="TOML settings file (default: $SWITCH_CONFIG, else built-in development defaults)",
    )
    serve_cmd.add_argument("--host", metavar="H", help="terminal listener address (listener.host)")
    serve_cmd.add_argument(
        "--port",
        type=int,
        metavar="N",
        help="terminal listener TCP port, 0 for any free port (listener.port)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config, os.environ)
    listener = settings.listener
    if args.host is not None:
        listener = replace(listener, host=args.host)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise SettingsError(
                "--port", "listener.port", f"a port from 0 to 65535, got {args.port}"
            )
        listener = replace(listener, port=args.port)
    return replace(settings, listener=listener)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"switch: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    try:
        uvloop.run(serve(settings))
    except StartupError as exc:
        print(f"switch: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
