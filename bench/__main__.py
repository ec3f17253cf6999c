"""`make bench`: run every benchmark, write bench/results/<timestamp>.json, print a table.

Figures are measured, never asserted. Each suite is a module with `run()` returning named
figures; a suite that fails is reported as failed and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import targets

SUITES = ("bench.codec_bench", "bench.hsm_bench", "bench.ledger_bench", "bench.switch_bench")
RESULTS_DIR = Path(__file__).parent / "results"


def run_suite(module_name: str) -> dict[str, Any]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return {"status": "not present"}
    started = time.perf_counter()
    try:
        figures = module.run()
        if inspect.iscoroutine(figures):
            figures = asyncio.run(figures)
    except Exception as exc:
        traceback.print_exc()
        return {"status": f"failed: {exc}"}
    return {"status": "ok", "seconds": round(time.perf_counter() - started, 1), "figures": figures}


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| suite | figure | value |", "|---|---|---:|"]
    for suite, result in results.items():
        if result["status"] != "ok":
            lines.append(f"| {suite} | ({result['status']}) | |")
            continue
        for name, value in result["figures"].items():
            shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
            lines.append(f"| {suite} | {name} | {shown} |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks (all of them by default: several minutes), write"
        " bench/results/<timestamp>.json and print a table. Figures are measured, never"
        " asserted.",
    )
    parser.add_argument(
        "--suite",
        action="append",
        choices=[name.removeprefix("bench.") for name in SUITES],
        help="run only this suite (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    chosen = [f"bench.{name}" for name in args.suite] if args.suite else list(SUITES)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, dict[str, Any]] = {}
    for suite in chosen:
        print(f"bench: running {suite} ...", file=sys.stderr, flush=True)
        results[suite.removeprefix("bench.")] = run_suite(suite)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{stamp}.json"
    machine = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count() or 0,
    }
    path.write_text(
        json.dumps({"timestamp": stamp, "machine": machine, "results": results}, indent=2)
    )
    print(markdown(results))
    print("\nThe performance issue's targets (docs/load-testing.md):\n")
    print(targets.markdown(results))
    print(f"\nresults written to {path}")
    return 0 if all(r["status"] in ("ok", "not present") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
