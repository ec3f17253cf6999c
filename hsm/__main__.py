"""``python -m hsm``: run the networked HSM, or print development key material.

python -m hsm serve [--host H] [--port P] [--lmk-file PATH] [--config PATH] [--production]
python -m hsm dev-keys [--seed TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from hsm.devkeys import make_dev_keys
from hsm.engine import SoftHsm
from hsm.errors import HsmError
from hsm.keys import DEVELOPMENT_LMK, Lmk, load_lmk
from hsm.server import HsmServer, ServerConfig

log = structlog.get_logger("hsm")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hsm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the networked HSM (host-command protocol over TCP)",
        description="Run the networked HSM. The LMK comes from --lmk-file, else the config's "
        "lmk_file/lmk_hex, else $HSM_LMK (64 hex); with none, the development LMK is used "
        "unless --production is given.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1, or config host)")
    serve.add_argument("--port", type=int, help="TCP port (default 1500, or config port)")
    serve.add_argument(
        "--lmk-file", type=Path, help="file holding the LMK as 64 hex characters, mode 600"
    )
    serve.add_argument(
        "--config",
        type=Path,
        help="TOML file with an [hsm] table: host, port, lmk_file, lmk_hex, production, "
        "connections_max, idle_timeout_ms (command-line options win)",
    )
    serve.add_argument(
        "--production",
        action="store_true",
        default=None,
        help="refuse to start with the development LMK or with no LMK configured",
    )
    dev = sub.add_parser(
        "dev-keys",
        help="print DEVELOPMENT ONLY demo keys (TMK, PVK, BDK) under the development LMK",
        description="Print JSON with a TMK, PVK and BDK as key blocks under the development LMK, "
        "plus the clear TMK for the terminal simulator. DEVELOPMENT ONLY.",
    )
    dev.add_argument("--seed", help="make the output reproducible from this text")
    return parser


def _table(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    with path.open("rb") as f:
        table: dict[str, Any] = tomllib.load(f).get("hsm", {})
    return table


async def _serve(args: argparse.Namespace) -> None:
    conf = _table(args.config)
    production = bool(args.production if args.production is not None else conf.get("production"))
    lmk_file = args.lmk_file or (Path(conf["lmk_file"]) if "lmk_file" in conf else None)
    lmk = load_lmk(
        lmk_hex=None if lmk_file else conf.get("lmk_hex"), lmk_file=lmk_file, production=production
    )
    if lmk.is_development:
        log.warning("hsm_development_lmk", note="DEVELOPMENT ONLY: keys are not protected")
    config = ServerConfig(
        host=args.host or conf.get("host", ServerConfig.host),
        port=args.port if args.port is not None else int(conf.get("port", ServerConfig.port)),
        connections_max=int(conf.get("connections_max", ServerConfig.connections_max)),
        idle_timeout_ms=int(conf.get("idle_timeout_ms", ServerConfig.idle_timeout_ms)),
    )
    server = HsmServer(SoftHsm(lmk), config)
    await server.start()
    print(f"HSM listening on {config.host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
        log.info("hsm_stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dev-keys":
        seed = args.seed.encode() if args.seed else None
        keys = make_dev_keys(Lmk(DEVELOPMENT_LMK), seed)
        print(json.dumps(keys.as_dict(), indent=2))
        return 0
    try:
        asyncio.run(_serve(args))
    except HsmError as exc:
        print(f"hsm: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
