"""Fixtures for the HSM tests: reproducible development keys, both HSM backends, and
certificates for mutual TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hsm.api import HSM
from hsm.client import NetworkHSM
from hsm.devkeys import DevKeys, make_dev_keys
from hsm.engine import SoftHsm
from hsm.local import LocalHSM
from hsm.server import HsmServer, ServerConfig

from .support import LMK, PAN_HASH_KEY, Pki, make_pki


@pytest.fixture(scope="session")
def dev_keys() -> DevKeys:
    return make_dev_keys(LMK, b"tests/hsm")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def soft_hsm() -> SoftHsm:
    return SoftHsm(LMK)


@pytest.fixture
async def hsm_server() -> AsyncIterator[HsmServer]:
    server = HsmServer(SoftHsm(LMK), ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    yield server
    await server.close()


@pytest.fixture(params=["local", "network"])
async def hsm(request: pytest.FixtureRequest) -> AsyncIterator[HSM]:
    """The same suite runs against the in-process HSM and the networked one over loopback."""
    if request.param == "local":
        yield LocalHSM(LMK, pan_hash_key=PAN_HASH_KEY)
        return
    server = HsmServer(
        SoftHsm(LMK, pan_hash_key=PAN_HASH_KEY), ServerConfig(host="127.0.0.1", port=0)
    )
    await server.start()
    client = NetworkHSM([("127.0.0.1", server.port)], timeout_ms=2000)
    yield client
    await client.close()
    await server.close()
