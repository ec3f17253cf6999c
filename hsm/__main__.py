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
from collections.abc import Sequence
from pathlib import Path

import structlog

from hsm import authorisation
from hsm.config import ConfigError, HsmConfig, load_config
from hsm.crypto import Algorithm
from hsm.devkeys import make_dev_keys
from hsm.engine import SoftHsm
from hsm.errors import DevelopmentKeyError, HsmError, KeyBlockError, KeyLengthError, KeyUsageError
from hsm.keys import DEVELOPMENT_LMK, DEVELOPMENT_PAN_HASH_KEY, KeyRole, Lmk, load_lmk
from hsm.server import HsmServer

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
        "connections_max, idle_timeout_ms, pan_hash_key, pin_verifications_per_minute_max, "
        "pin_cards_tracked_max, a [hsm.tls] table and [[hsm.clients]] (command-line options win)",
    )
    serve.add_argument(
        "--production",
        action="store_true",
        default=None,
        help="refuse to start without mutual TLS, with no LMK configured, or with the "
        "development LMK or PAN-hash key",
    )
    dev = sub.add_parser(
        "dev-keys",
        help="print DEVELOPMENT ONLY demo keys (TMK, PVK, BDK, PHK) under the development LMK",
        description="Print JSON with a TMK, PVK, BDK and the development PAN-hash key (PHK) as "
        "key blocks under the development LMK, plus the clear TMK for the terminal simulator. "
        "DEVELOPMENT ONLY.",
    )
    dev.add_argument("--seed", help="make the output reproducible from this text")
    key = sub.add_parser(
        "authorisation-key",
        help="print the ledger's authorisation key (hex), for `python -m ledger"
        " authorisation-key install`",
        description="Key ceremony: print, in hex, the authorisation key this HSM derives from its"
        " PAN-hash key, so that the ledger can verify the HSM's word on each approval. Pipe it"
        " straight into `python -m ledger authorisation-key install`; never store it. It"
        " authorises only: it decrypts no PIN and computes no PAN hash.",
    )
    key.add_argument("--config", type=Path, help="the HSM's TOML file (its pan_hash_key, LMK)")
    key.add_argument("--lmk-file", type=Path, help="file holding the LMK, as for serve")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    given = {
        "host": args.host,
        "port": args.port,
        "production": args.production,
        # Relative to the working directory, unlike paths in the file.
        "lmk_file": None if args.lmk_file is None else str(args.lmk_file.resolve()),
    }
    return {key: value for key, value in given.items() if value is not None}


def _core(config: HsmConfig, lmk: Lmk) -> SoftHsm:
    """The engine; the PAN-hash key is the only key it opens now, so errors are about it.
    Under the development LMK with no PAN-hash key configured, the development one: its hashes
    and authorisation key are the ledger's development ones."""
    pan_hash_key = config.pan_hash_key
    if pan_hash_key is None and lmk.is_development and not config.production:
        pan_hash_key = lmk.wrap(KeyRole.PHK, Algorithm.HMAC, DEVELOPMENT_PAN_HASH_KEY)
    try:
        return SoftHsm(
            lmk,
            production=config.production,
            pan_hash_key=pan_hash_key,
            pin_rate_limit=config.pin_rate_limit,
        )
    except DevelopmentKeyError:
        expected = "a PAN-hash key of your own: production = true refuses the development key"
        raise ConfigError(config.source, "hsm.pan_hash_key", expected) from None
    except (KeyBlockError, KeyUsageError, KeyLengthError) as exc:
        expected = f"a PHK key block under this HSM's LMK ({exc})"
        raise ConfigError(config.source, "hsm.pan_hash_key", expected) from None


async def _serve(args: argparse.Namespace) -> None:
    config = load_config(args.config, _overrides(args))
    lmk = load_lmk(
        lmk_hex=None if config.lmk_file else config.lmk_hex,
        lmk_file=config.lmk_file,
        production=config.production,
    )
    if lmk.is_development:
        log.warning("hsm_development_lmk", note="DEVELOPMENT ONLY: keys are not protected")
    server = HsmServer(_core(config, lmk), config.server)
    await server.start()
    print(f"HSM listening on {config.server.host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
        log.info("hsm_stopped")


def _authorisation_key(args: argparse.Namespace) -> bytes:
    overrides = {} if args.lmk_file is None else {"lmk_file": str(args.lmk_file.resolve())}
    config = load_config(args.config, overrides)
    lmk = load_lmk(
        lmk_hex=None if config.lmk_file else config.lmk_hex,
        lmk_file=config.lmk_file,
        production=config.production,
    )
    if config.pan_hash_key is None:
        raise ConfigError(config.source, "hsm.pan_hash_key", "the PHK the key is derived from")
    return authorisation.authorisation_key(lmk.unwrap(config.pan_hash_key, (KeyRole.PHK,), "G"))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dev-keys":
        seed = args.seed.encode() if args.seed else None
        keys = make_dev_keys(Lmk(DEVELOPMENT_LMK), seed)
        print(json.dumps(keys.as_dict(), indent=2))
        return 0
    try:
        if args.command == "authorisation-key":
            print(_authorisation_key(args).hex())
            return 0
        asyncio.run(_serve(args))
    except (HsmError, ConfigError) as exc:
        print(f"hsm: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
