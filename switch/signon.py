"""Completing a sign-on once the terminal's record is known. Pure apart from the session."""

from __future__ import annotations

from dataclasses import replace

from switch.iso8583.message import Message
from switch.iso8583.response_codes import ResponseCode
from switch.responses import respond
from switch.server import ConnectionView
from switch.session import SessionEvent, TerminalKeys, advance


def complete_sign_on(
    request: Message, connection: ConnectionView, keys: TerminalKeys | None
) -> Message:
    """Bind the connection to the terminal in F41 and hold its keys for the session."""
    admission = advance(connection.session, SessionEvent.SIGN_ON, request.terminal_id)
    if admission.refusal is not None:
        return respond(request, admission.refusal)
    connection.session = replace(admission.session, keys=keys)
    return respond(request, ResponseCode.APPROVED)
