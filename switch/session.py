"""A terminal connection's session as a transition table: connected → signed on → signed off.

Pure: `advance` takes the session and a request's event and returns the next session, or the
response code that refuses the request. A transition missing from the table is a refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType

from hsm.keys import StoredKey
from switch.iso8583.message import Message
from switch.iso8583.response_codes import ResponseCode


class SessionState(StrEnum):
    CONNECTED = "connected"
    SIGNED_ON = "signed_on"
    SIGNED_OFF = "signed_off"


class SecurityEvent(StrEnum):
    """A refusal that is also logged as a security event: a terminal acting for another."""

    TERMINAL_ID_MISMATCH = "terminal_id_mismatch"
    CERTIFICATE_SUBJECT_MISMATCH = "certificate_subject_mismatch"


class SessionEvent(StrEnum):
    SIGN_ON = "sign_on"
    SIGN_OFF = "sign_off"
    ECHO = "echo"
    KEY_CHANGE = "key_change"
    FINANCIAL = "financial"


_S, _E = SessionState, SessionEvent
TRANSITIONS: Mapping[tuple[SessionState, SessionEvent], SessionState] = MappingProxyType(
    {
        (_S.CONNECTED, _E.SIGN_ON): _S.SIGNED_ON,
        (_S.CONNECTED, _E.SIGN_OFF): _S.SIGNED_OFF,
        (_S.CONNECTED, _E.ECHO): _S.CONNECTED,
        (_S.SIGNED_ON, _E.SIGN_ON): _S.SIGNED_ON,
        (_S.SIGNED_ON, _E.SIGN_OFF): _S.SIGNED_OFF,
        (_S.SIGNED_ON, _E.ECHO): _S.SIGNED_ON,
        (_S.SIGNED_ON, _E.KEY_CHANGE): _S.SIGNED_ON,
        (_S.SIGNED_ON, _E.FINANCIAL): _S.SIGNED_ON,
        (_S.SIGNED_OFF, _E.SIGN_ON): _S.SIGNED_ON,
        (_S.SIGNED_OFF, _E.SIGN_OFF): _S.SIGNED_OFF,
        (_S.SIGNED_OFF, _E.ECHO): _S.SIGNED_OFF,
    }
)

# 0800 field 70 network management codes.
NETWORK_EVENTS: Mapping[str, SessionEvent] = MappingProxyType(
    {"001": _E.SIGN_ON, "002": _E.SIGN_OFF, "301": _E.ECHO, "161": _E.KEY_CHANGE}
)
FINANCIAL_CLASSES: frozenset[str] = frozenset({"010", "020", "042"})
# Terminal balancing (0500) is admitted as financial requests are (signed on, its own
# terminal), but not counted with them in the fleet's approval rates and latencies.
SIGNED_ON_CLASSES: frozenset[str] = FINANCIAL_CLASSES | {"050"}


def classify(request: Message) -> SessionEvent | None:
    """The session event a request is, or None when the switch does not handle it."""
    if request.message_class == "080":
        return NETWORK_EVENTS.get(request.network_code or "")
    if request.message_class in SIGNED_ON_CLASSES:
        return _E.FINANCIAL
    return None


@dataclass(frozen=True, slots=True, repr=False)
class TerminalKeys:
    """The terminal's keys as LMK cryptograms, read at sign-on and replaced at key change."""

    tmk: StoredKey | None
    tpk: StoredKey | None
    tak: StoredKey | None
    # A DUKPT terminal's BDK: its PIN blocks come under a per-transaction key derived from it.
    bdk: StoredKey | None = None

    def __repr__(self) -> str:
        return f"TerminalKeys(session_keys={self.tpk is not None and self.tak is not None})"


@dataclass(frozen=True, slots=True)
class Session:
    state: SessionState = SessionState.CONNECTED
    # The terminal that signed on over this connection; a connection serves one terminal.
    terminal_id: str | None = None
    keys: TerminalKeys | None = None
    # Set from the client certificate when the listener requires its subject to match: the
    # only terminal this connection may act as, from before sign-on on.
    certified_terminal_id: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    session: Session
    refusal: ResponseCode | None
    reason: str | None = None
    # A terminal acting for another: refused, and logged as a security event.
    security_event: SecurityEvent | None = None


def with_session_keys(session: Session, tpk: StoredKey, tak: StoredKey) -> Session:
    """A key change's new TPK and TAK, installed in the session as it is when they arrive."""
    assert session.keys is not None, "a terminal with a TMK has keys"
    return replace(session, keys=replace(session.keys, tpk=tpk, tak=tak))


def advance(session: Session, event: SessionEvent, terminal_id: str | None) -> Admission:
    """Apply one request's event. Echo needs no terminal id; everything else names this
    connection's terminal in field 41 (the one its certificate names, when that is required),
    and sign-on binds it."""
    next_state = TRANSITIONS.get((session.state, event))
    if next_state is None:
        return Admission(
            session, ResponseCode.NOT_PERMITTED_TO_TERMINAL, f"{event} while {session.state}"
        )
    if event is _E.ECHO:
        return Admission(replace(session, state=next_state), None)
    certified = session.certified_terminal_id
    if certified is not None and terminal_id != certified:
        return Admission(
            session,
            ResponseCode.NOT_PERMITTED_TO_TERMINAL,
            "certificate names another terminal",
            SecurityEvent.CERTIFICATE_SUBJECT_MISMATCH,
        )
    bound = session.terminal_id
    if bound is not None and terminal_id != bound:
        return Admission(
            session,
            ResponseCode.NOT_PERMITTED_TO_TERMINAL,
            "terminal id mismatch",
            SecurityEvent.TERMINAL_ID_MISMATCH,
        )
    if next_state == session.state and bound is not None:
        return Admission(session, None)  # a request in session: nothing changes
    return Admission(replace(session, state=next_state, terminal_id=bound or terminal_id), None)
