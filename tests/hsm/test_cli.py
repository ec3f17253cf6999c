"""`python -m hsm`: help text, development keys, and the production refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hsm.__main__ import main
from hsm.client import NetworkHSM
from hsm.devserver import REPO, spawn_dev_hsm
from hsm.keys import DEVELOPMENT_LMK, DEVELOPMENT_LMK_HEX, KeyRole, Lmk, StoredKey

from .support import Pki


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
    assert StoredKey.from_text(keys["phk"]).role is KeyRole.PHK
    imk_ac = StoredKey.from_text(keys["imk_ac"])
    assert (imk_ac.role, imk_ac.kcv, len(keys["imk_ac_clear"])) == (
        KeyRole.IMK_AC,
        keys["imk_ac_kcv"],
        32,
    )


def tls_config(pki: Pki) -> str:
    return (
        "[hsm.tls]\n"
        f'cert_file = "{pki.hsm.cert}"\n'
        f'key_file = "{pki.hsm.key}"\n'
        f'client_ca_file = "{pki.ca.cert}"\n'
        "[[hsm.clients]]\n"
        'cn = "switch-1"\n'
        'profile = "switch"\n'
    )


def run_hsm(*args: str, env_lmk: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HSM_LMK"}
    if env_lmk:
        env["HSM_LMK"] = env_lmk
    return subprocess.run(
        [sys.executable, "-m", "hsm", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("env_lmk", [DEVELOPMENT_LMK_HEX, None])
def test_serve_refuses_development_lmk_in_production(
    env_lmk: str | None, pki: Pki, tmp_path: Path
) -> None:
    config = tmp_path / "hsm.toml"
    config.write_text("[hsm]\nproduction = true\n" + tls_config(pki), encoding="utf-8")
    done = run_hsm("serve", "--config", str(config), "--port", "0", env_lmk=env_lmk)
    assert done.returncode == 2
    assert "LMK" in done.stderr
    assert DEVELOPMENT_LMK_HEX not in done.stderr + done.stdout


def test_production_without_tls_refuses_to_start(tmp_path: Path) -> None:
    """Whatever the LMK: the file and the key that are missing are named."""
    config = tmp_path / "hsm.toml"
    config.write_text("[hsm]\nproduction = true\n", encoding="utf-8")
    done = run_hsm("serve", "--config", str(config), "--port", "0", env_lmk="11" * 32)
    assert done.returncode == 2
    assert f"{config}" in done.stderr
    assert "hsm.tls: expected a [hsm.tls] table" in done.stderr


def test_production_flag_without_a_config_file_refuses_to_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--production", "--port", "0"]) == 2
    assert "hsm.tls" in capsys.readouterr().err


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
