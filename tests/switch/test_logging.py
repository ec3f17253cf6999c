"""Logging: card data is masked or dropped before anything is rendered."""

from __future__ import annotations

import io
import json

import structlog

from switch.logging import configure_logging, mask_pans, redact_card_data
from switch.settings import LoggingSettings

PAN = "4761739001010119"


def test_redaction_drops_secrets_and_masks_pans() -> None:
    event = redact_card_data(
        None,
        "info",
        {
            "event": f"card {PAN} seen",
            "pin_block": "0123456789ABCDEF",
            "field_35": f"{PAN}=2512",
            "tak": "00112233445566778899AABBCCDDEEFF",
            "nested": {"pan": PAN, "pin": "1234", "list": [PAN]},
            "stan": "000001",
            "number": int(PAN),
        },
    )
    assert event == {
        "event": "card 476173******0119 seen",
        "nested": {"pan": "476173******0119", "pin": "<redacted>", "list": ["476173******0119"]},
        "stan": "000001",
        "number": "476173******0119",
    }


def test_mask_pans_leaves_short_numbers_alone() -> None:
    assert mask_pans("stan 000001 rrn 123456789012 amount 000000002000") == (
        "stan 000001 rrn 123456789012 amount 000000002000"
    )
    assert mask_pans(f"x{PAN}y") == "x476173******0119y"


def test_json_output_never_holds_a_pan_even_in_a_traceback() -> None:
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="info"), out)
    try:
        _log_card_data()
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["message", "failed"]
    assert PAN not in out.getvalue()
    assert "ABABABAB" not in out.getvalue()
    assert "476173******0119" in lines[1]["exception"]


def _log_card_data() -> None:
    log = structlog.get_logger("test")
    log.info("message", terminal_id="KIOSK001", pan=PAN, pin_block="AB" * 8)
    try:
        raise ValueError(f"bad card {PAN}")
    except ValueError:
        log.exception("failed")
    log.debug("hidden at info level")
