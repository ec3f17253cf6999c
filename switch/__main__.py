"""`python -m switch serve`: run the transaction switch; `python -m switch keys new`: mint an API
key for the operations app."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import uvloop

from switch.access import Role, config_lines, mint
from switch.app import StartupError, serve
from switch.logging import configure_logging
from switch.settings import WORKERS_MAX, Settings, SettingsError, load_settings
from switch.workers import announce_ready, as_worker, die_with_parent, run_workers


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
            "then --host/--port/--workers. SIGTERM or SIGINT stops accepting, lets in-flight "
            "requests finish within shutdown.grace_ms, and exits. With --workers N above 1, a "
            "parent process runs N worker processes sharing both ports (SO_REUSEPORT), restarts "
            "one that dies, and drains them all on SIGTERM or SIGINT."
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
    serve_cmd.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=f"processes serving terminals, 1 to {WORKERS_MAX} (switch.workers; default 1: this"
        " process alone)",
    )
    # Set by the parent of --workers on the workers it starts: its pid, and the pipe on which
    # the worker says it serves.
    serve_cmd.add_argument("--worker-of", type=int, metavar="PID", help=argparse.SUPPRESS)
    serve_cmd.add_argument("--ready-fd", type=int, metavar="FD", help=argparse.SUPPRESS)
    _keys_parser(commands)
    return parser


def _keys_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="API keys for the operations app")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    new = keys_commands.add_parser(
        "new",
        help="mint a key: its secret once on stderr, its config lines on stdout",
        description=(
            "Mint an API key for the operations app. The key itself (`<id>.<secret>`, sent as "
            "`Authorization: Bearer <key>`) is printed once, on stderr, and kept nowhere: hand "
            "it to its holder. Stdout gets the [[admin.keys]] lines to add to the switch's "
            "config (they hold only a salted HMAC-SHA256 of the key), so that "
            "`python -m switch keys new --role viewer >> switch.toml` never writes the key to "
            "the file. Roles: operator (fleet, metrics), auditor (journal, reports, "
            "verification), viewer (fleet and metrics, read-only)."
        ),
    )
    new.add_argument("--role", required=True, choices=[str(role) for role in Role])
    new.add_argument(
        "--id",
        dest="key_id",
        metavar="NAME",
        help="the key's id in logs and config: letters, digits, '-', '_' (default: ROLE-<random>)",
    )


def _new_key(args: argparse.Namespace) -> int:
    try:
        minted = mint(Role(args.role), args.key_id)
    except ValueError as exc:
        print(f"switch: {exc}", file=sys.stderr)
        return 2
    print(
        f"API key {minted.key.key_id} ({minted.key.role}), shown this once:\n\n"
        f"    {minted.token}\n\n"
        "Give it to its holder (Authorization: Bearer <key>). Add the lines on stdout to the "
        "switch's config (or SWITCH__ADMIN__KEYS) and restart it.",
        file=sys.stderr,
    )
    print(config_lines(minted.key), end="")
    return 0


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
    workers = settings.workers
    if args.workers is not None:
        if not 1 <= args.workers <= WORKERS_MAX:
            raise SettingsError(
                "--workers",
                "switch.workers",
                f"from 1 to {WORKERS_MAX} processes, got {args.workers}",
            )
        workers = args.workers
    return replace(settings, listener=listener, workers=workers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        return _new_key(args)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"switch: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.worker_of is not None:
        return _serve_worker(settings, args.worker_of, args.ready_fd)
    configure_logging(settings.logging)
    try:
        if settings.workers > 1:
            return run_workers(settings, args.config)
        uvloop.run(serve(settings))
    except StartupError as exc:
        print(f"switch: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve_worker(settings: Settings, parent_pid: int, ready_fd: int) -> int:
    """One worker of `--workers`: every line it logs carries its pid."""
    configure_logging(settings.logging, fields={"pid": os.getpid()})
    try:
        die_with_parent(parent_pid)
        uvloop.run(serve(as_worker(settings), ready=partial(announce_ready, ready_fd)))
    except StartupError as exc:
        print(f"switch: worker {os.getpid()} cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
