"""What to do with one decoded request, decided in arrival order before any I/O. Pure.

Sign-off and echo are answered here. Sign-on (which reads the terminal's record), key change
and financial messages are admitted (or refused) against the session and handed to the async
handler; sign-on only changes the session once the handler has found the terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from switch.iso8583.message import Message
from switch.iso8583.response_codes import ResponseCode
from switch.responses import is_request_mti, respond
from switch.session import SecurityEvent, Session, SessionEvent, advance, classify

# Fields without which a request cannot even be routed (by message class).
ROUTING_FIELDS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        "080": (7, 11, 70),
        "010": (3, 7, 11, 41),
        "020": (3, 7, 11, 41),
        "042": (3, 7, 11, 41, 90),
        "050": (7, 11, 41),
    }
)
_ANSWERED_HERE = frozenset({SessionEvent.SIGN_OFF, SessionEvent.ECHO})


@dataclass(frozen=True, slots=True)
class Routing:
    """`reply` is sent at once; otherwise `forward` hands the request to the async handler.
    Neither set: the message is dropped (a response MTI sent to us), with `reason` logged."""

    session: Session
    reply: Message | None = None
    forward: bool = False
    reason: str | None = None
    security_event: SecurityEvent | None = None


def route(session: Session, request: Message) -> Routing:
    if not is_request_mti(request.mti):
        return Routing(session, reason=f"MTI {request.mti} is not a request")
    required = ROUTING_FIELDS.get(request.message_class)
    if required is None:
        return _refuse(
            session, request, ResponseCode.INVALID_TRANSACTION, "message class not handled"
        )
    missing = [n for n in required if n not in request]
    if missing:
        return _refuse(session, request, ResponseCode.FORMAT_ERROR, f"missing fields {missing}")
    event = classify(request)
    if event is None:
        return _refuse(
            session, request, ResponseCode.INVALID_TRANSACTION, "network code not handled"
        )
    if event is SessionEvent.SIGN_ON and request.terminal_id is None:
        return _refuse(session, request, ResponseCode.FORMAT_ERROR, "sign-on without field 41")
    admission = advance(session, event, request.terminal_id)
    if admission.refusal is not None:
        refused = _refuse(session, request, admission.refusal, admission.reason)
        return replace(refused, security_event=admission.security_event)
    if event in _ANSWERED_HERE:
        return Routing(admission.session, reply=respond(request, ResponseCode.APPROVED))
    if event is SessionEvent.SIGN_ON:
        return Routing(session, forward=True)
    return Routing(admission.session, forward=True)


def _refuse(session: Session, request: Message, code: ResponseCode, reason: str | None) -> Routing:
    return Routing(session, reply=respond(request, code), reason=reason)
