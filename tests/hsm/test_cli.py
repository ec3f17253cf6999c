"""`python -m hsm`: help text, development keys, and the production refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest

from hsm.__main__ import main
from hsm.client import NetworkHSM
from hsm.devserver import REPO, spawn_dev_hsm
from hsm.keys import DEVELOPMENT_LMK, DEVELOPMENT_LMK_HEX, Lmk, StoredKey


def test_serve_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--lmk-file", "--config", "--production", "HSM_LMK"):
        assert option in out


def test_dev_keys_prints_labelled_key_material(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev-keys", "--seed", "demo"]) == 0
    keys = json.loads(capsys.readouterr().out)
    assert "DEVELOPMENT ONLY" in keys["warning"]
    assert StoredKey.from_text(keys["tmk"]).kcv == keys["tmk_kcv"]
    assert len(keys["tmk_clear"]) == 32
    assert StoredKey.from_text(keys["pvk"]).role.value == "PVK"


@pytest.mark.parametrize(
    ("args", "env_lmk"),
    [
        (["serve", "--production", "--port", "0"], DEVELOPMENT_LMK_HEX),
        (["serve", "--production", "--port", "0"], None),
    ],
)
def test_serve_refuses_development_lmk_in_production(args: list[str], env_lmk: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HSM_LMK"}
    if env_lmk:
        env["HSM_LMK"] = env_lmk
    done = subprocess.run(
        [sys.executable, "-m", "hsm", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert DEVELOPMENT_LMK_HEX not in done.stderr + done.stdout


def test_dev_config_holds_the_development_lmk() -> None:
    config = tomllib.loads((REPO / "config" / "hsm.dev.toml").read_text(encoding="utf-8"))
    assert config["hsm"]["lmk_hex"] == DEVELOPMENT_LMK_HEX
    assert config["hsm"]["production"] is False


async def test_serve_with_dev_config_answers_health() -> None:
    proc, port = await spawn_dev_hsm("--config", "config/hsm.dev.toml")
    try:
        async with NetworkHSM([("127.0.0.1", port)]) as client:
            assert await client.health() == Lmk(DEVELOPMENT_LMK).kcv
    finally:
        proc.kill()
        await proc.wait()
