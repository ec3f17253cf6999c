"""Session transition table and the pure routing of each request."""

from __future__ import annotations

import itertools

import pytest

from switch.dispatch import route
from switch.iso8583 import Message
from switch.iso8583.response_codes import ResponseCode
from switch.session import (
    TRANSITIONS,
    SecurityEvent,
    Session,
    SessionEvent,
    SessionState,
    advance,
)

S, E = SessionState, SessionEvent
SIGNED_ON = Session(S.SIGNED_ON, "KIOSK001")


@pytest.mark.parametrize(
    ("session", "event", "terminal_id", "expected"),
    [
        (Session(), E.SIGN_ON, "KIOSK001", SIGNED_ON),
        (Session(), E.ECHO, None, Session()),
        (SIGNED_ON, E.FINANCIAL, "KIOSK001", SIGNED_ON),
        (SIGNED_ON, E.KEY_CHANGE, "KIOSK001", SIGNED_ON),
        (SIGNED_ON, E.SIGN_OFF, "KIOSK001", Session(S.SIGNED_OFF, "KIOSK001")),
        (Session(S.SIGNED_OFF, "KIOSK001"), E.SIGN_ON, "KIOSK001", SIGNED_ON),
        (Session(S.SIGNED_OFF, "KIOSK001"), E.ECHO, None, Session(S.SIGNED_OFF, "KIOSK001")),
    ],
)
def test_allowed_transitions(
    session: Session, event: SessionEvent, terminal_id: str | None, expected: Session
) -> None:
    admission = advance(session, event, terminal_id)
    assert admission.refusal is None
    assert admission.session == expected


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)))
def test_every_transition_missing_from_the_table_is_refused(
    state: SessionState, event: SessionEvent
) -> None:
    admission = advance(Session(state, "KIOSK001"), event, "KIOSK001")
    if (state, event) in TRANSITIONS:
        assert admission.refusal is None
    else:
        assert admission.refusal is ResponseCode.NOT_PERMITTED_TO_TERMINAL
        assert admission.session == Session(state, "KIOSK001")


def test_another_terminal_id_on_a_bound_connection_is_refused() -> None:
    admission = advance(SIGNED_ON, E.FINANCIAL, "KIOSK002")
    assert admission.refusal is ResponseCode.NOT_PERMITTED_TO_TERMINAL
    assert admission.reason == "terminal id mismatch"
    assert admission.security_event is SecurityEvent.TERMINAL_ID_MISMATCH


CERTIFIED = Session(certified_terminal_id="KIOSK001")


@pytest.mark.parametrize(
    ("session", "event", "terminal_id", "refused"),
    [
        (CERTIFIED, E.SIGN_ON, "KIOSK001", False),
        (CERTIFIED, E.SIGN_ON, "KIOSK002", True),
        (CERTIFIED, E.SIGN_OFF, "KIOSK002", True),  # would bind KIOSK002 to the connection
        (CERTIFIED, E.ECHO, None, False),
        (
            Session(S.SIGNED_ON, "KIOSK001", certified_terminal_id="KIOSK001"),
            E.FINANCIAL,
            "KIOSK002",
            True,
        ),
        (
            Session(S.SIGNED_OFF, "KIOSK001", certified_terminal_id="KIOSK001"),
            E.SIGN_ON,
            "KIOSK002",
            True,
        ),
    ],
)
def test_a_certified_connection_acts_only_as_the_terminal_its_certificate_names(
    session: Session, event: SessionEvent, terminal_id: str | None, refused: bool
) -> None:
    admission = advance(session, event, terminal_id)
    if not refused:
        assert admission.refusal is None
        assert admission.session.certified_terminal_id == "KIOSK001"
        return
    assert admission.refusal is ResponseCode.NOT_PERMITTED_TO_TERMINAL
    assert admission.security_event is SecurityEvent.CERTIFICATE_SUBJECT_MISMATCH
    assert admission.session == session


NOW = {7: "1123101500"}


def net(code: str, stan: str = "000001", terminal: str | None = "KIOSK001") -> Message:
    fields = {**NOW, 11: stan, 70: code}
    if terminal is not None:
        fields[41] = terminal
    return Message("0800", fields)


FINANCIAL = Message("0200", {**NOW, 3: "310000", 11: "000007", 41: "KIOSK001"})

ROUTES = [
    # (session, request, expected reply MTI, F39 or None for "forwarded", session after)
    pytest.param(Session(), net("001"), None, None, Session(), id="sign-on-forwarded"),
    pytest.param(
        SIGNED_ON, net("001", terminal="KIOSK002"), "0810", "58", SIGNED_ON, id="sign-on-as-other"
    ),
    pytest.param(
        Session(), net("301", terminal=None), "0810", "00", Session(), id="echo-before-sign-on"
    ),
    pytest.param(
        SIGNED_ON, net("002"), "0810", "00", Session(S.SIGNED_OFF, "KIOSK001"), id="sign-off"
    ),
    pytest.param(Session(), FINANCIAL, "0210", "58", Session(), id="financial-before-sign-on"),
    pytest.param(SIGNED_ON, FINANCIAL, None, None, SIGNED_ON, id="financial-forwarded"),
    pytest.param(SIGNED_ON, net("161"), None, None, SIGNED_ON, id="key-change-forwarded"),
    pytest.param(Session(), net("161"), "0810", "58", Session(), id="key-change-before-sign-on"),
    pytest.param(SIGNED_ON, net("999"), "0810", "12", SIGNED_ON, id="unknown-network-code"),
    pytest.param(
        Session(), net("001", terminal=None), "0810", "30", Session(), id="sign-on-without-f41"
    ),
    pytest.param(
        SIGNED_ON,
        Message("0800", {11: "000001", 70: "301"}),
        "0810",
        "30",
        SIGNED_ON,
        id="missing-f7",
    ),
    pytest.param(
        SIGNED_ON,
        Message("0300", {**NOW, 11: "000001"}),
        "0310",
        "12",
        SIGNED_ON,
        id="class-not-handled",
    ),
    pytest.param(
        SIGNED_ON,
        FINANCIAL.replace({41: "KIOSK002"}),
        "0210",
        "58",
        SIGNED_ON,
        id="other-terminal",
    ),
]


@pytest.mark.parametrize(("session", "request_", "mti", "code", "after"), ROUTES)
def test_route(
    session: Session, request_: Message, mti: str | None, code: str | None, after: Session
) -> None:
    routing = route(session, request_)
    assert routing.session == after
    if mti is None:
        assert routing.forward
        assert routing.reply is None
        return
    assert routing.reply is not None
    assert not routing.forward
    assert (routing.reply.mti, routing.reply.response_code) == (mti, code)
    assert routing.reply.stan == request_.stan


def test_acting_for_another_terminal_is_a_security_event() -> None:
    routing = route(SIGNED_ON, FINANCIAL.replace({41: "KIOSK002"}))
    assert routing.security_event is SecurityEvent.TERMINAL_ID_MISMATCH
    assert route(Session(), FINANCIAL).security_event is None
    sign_on = route(CERTIFIED, net("001", terminal="KIOSK002"))
    assert sign_on.security_event is SecurityEvent.CERTIFICATE_SUBJECT_MISMATCH
    assert sign_on.reply is not None
    assert sign_on.reply.response_code == "58"


def test_a_response_mti_sent_to_the_switch_is_dropped_with_a_reason() -> None:
    routing = route(SIGNED_ON, Message("0810", {**NOW, 11: "000001", 39: "00"}))
    assert routing.reply is None
    assert not routing.forward
    assert routing.reason == "MTI 0810 is not a request"


def test_replies_echo_routing_fields_but_never_card_data() -> None:
    request = FINANCIAL.replace({2: "4761739001010119", 52: "0123456789ABCDEF"})
    routing = route(Session(), request)
    assert routing.reply is not None
    assert set(routing.reply.fields) == {3, 7, 11, 39, 41}
