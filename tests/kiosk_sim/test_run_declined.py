"""`kiosk_sim run` against a switch that declines a kiosk's sign-on or key change."""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from kiosk_sim.__main__ import main
from switch.iso8583 import Dialect, FrameBuffer, LengthHeader, decode, frame, wire_of
from switch.iso8583.response_codes import ResponseCode
from switch.responses import respond
from tests.conftest import PgCluster

DIALECT = Dialect()
HEADER = LengthHeader.of(DIALECT.length_header)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    # F70 network code → the F39 to answer it with; everything else is approved.
    codes: Mapping[str, ResponseCode]


class _Declining(socketserver.BaseRequestHandler):
    """Just enough of a switch to answer network messages with chosen response codes."""

    server: _Server

    def handle(self) -> None:
        framer = FrameBuffer(HEADER, 4096)
        while data := self.request.recv(4096):
            for payload in framer.feed(data):
                request = decode(payload, DIALECT)
                code = self.server.codes.get(request.network_code or "", ResponseCode.APPROVED)
                self.request.sendall(frame(wire_of(respond(request, code), DIALECT), HEADER))


@contextlib.contextmanager
def declining_switch(codes: Mapping[str, ResponseCode]) -> Iterator[int]:
    with _Server(("127.0.0.1", 0), _Declining) as server:
        server.codes = codes
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


@pytest.mark.parametrize(
    ("codes", "step", "explanation"),
    [
        (
            {"001": ResponseCode.NOT_PERMITTED_TO_TERMINAL},
            "sign_on",
            "sign_on answered 58 (not permitted to terminal): the switch has no active terminal"
            " by that id: kiosk_sim provisioned its kiosks into another ledger; give it the"
            " switch's own (--dsn, or --data-dir as the switch's ledger.data_dir)",
        ),
        (
            {"161": ResponseCode.ISSUER_UNAVAILABLE},
            "key_change",
            "key_change answered 91 (issuer unavailable): the switch could not reach its HSM or"
            ' its ledger in time: see the switch\'s log; with [hsm] backend = "network", start'
            " the HSM (python -m hsm serve) at hsm.addresses",
        ),
    ],
)
def test_a_declined_start_is_explained_and_still_reported(
    pg_cluster: PgCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    codes: Mapping[str, ResponseCode],
    step: str,
    explanation: str,
) -> None:
    report_path = tmp_path / "report.json"
    with declining_switch(codes) as port:
        exit_code = main(
            [
                *("run", "--port", str(port), "--terminals", "2", "--seed", "5"),
                *("--dsn", pg_cluster.owner_dsn, "--report", str(report_path)),
            ]
        )
    out, err = capsys.readouterr()
    assert exit_code == 2
    assert err.splitlines()[0] == f"kiosk_sim: S0050000: {explanation}"
    assert out.startswith("run       2 terminals, ")
    report = json.loads(report_path.read_text())
    assert report["errors"] == {f"{step}_declined": 1}
    assert report["answered"] == 0
