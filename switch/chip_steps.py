"""The chip checks that need the card's record or the HSM, and the ARPC of the answer.

Each check either passes (None) or ends the request with an outcome. Declines after the card's
record is read are recorded in the audit journal (the ledger's decline recording); a replayed
ATC, an ARQC that does not verify and a chip amount that is not the request's are also logged
as security events. The ledger checks the ATC once more, under lock, when it writes the request
(see `ledger.rules.decide` and ledger.post_batch), so two requests with one ATC never both pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType

import structlog

from hsm import emv
from hsm.api import HSM
from hsm.authorisation import Authorisation
from hsm.emv import ArqcResult, CryptogramVersion
from hsm.errors import EmvError, HsmError, KeyMaterialError
from hsm.keys import StoredKey
from ledger.deadline import Deadline
from ledger.model import EmvProfile
from ledger.model import Outcome as LedgerOutcome
from ledger.pan import mask_pan
from ledger.store import LedgerStore, Lookup
from switch import chip
from switch.chip import AtcCheck, CardRead, IccData
from switch.iso8583.response_codes import ResponseCode
from switch.iso8583.spec import ICC_DATA_FIELD
from switch.pipeline import Outcome, answer
from switch.transaction import Transaction

log = structlog.get_logger("switch.chip")


@dataclass(frozen=True, slots=True, repr=False)
class VerifiedArqc:
    """An ARQC the HSM verified, with what it takes to answer it with another response code."""

    icc: IccData
    imk: StoredKey
    psn: str
    version: CryptogramVersion
    result: ArqcResult
    authorisation: bytes  # the HSM's word for the request's ATC (hsm/authorisation.py)

    def __repr__(self) -> str:
        return f"VerifiedArqc(cvn={self.version.cvn})"


class ChipSteps:
    """The chip's part of a financial request's pipeline (see `flows.STEPS`)."""

    def __init__(
        self,
        *,
        hsm: HSM,
        ledger: LedgerStore,
        wall_clock: Callable[[], datetime],
        write_timeout_ms: int,
        atc_jump_logged: int,
    ) -> None:
        self._hsm = hsm
        self._ledger = ledger
        self._now = wall_clock
        self._write_timeout_ms = write_timeout_ms
        self._atc_jump_logged = atc_jump_logged

    async def check_card_read(
        self, transaction: Transaction, read: CardRead, lookup: Lookup
    ) -> Outcome | None:
        """Chip data only for a card with an EMV profile; a chip card by its stripe only where
        its profile allows fallback."""
        card = lookup.card
        refused = chip.fallback_refusal(read, card)
        if refused is not None:
            outcome, reason = refused
            return await self._decline(transaction, lookup, outcome, reason)
        if card is not None and chip.is_fallback(read, card):
            log.info(
                "chip_fallback",
                card=mask_pan(transaction.pan),
            )
        return None

    async def check_chip_data(
        self, transaction: Transaction, icc: IccData, lookup: Lookup
    ) -> Outcome | None:
        """The chip's amount and currency are the request's, its PAN sequence number the
        profile's, its ATC above the card's last."""
        mismatch = chip.icc_mismatch(transaction, icc)
        if mismatch is not None:
            self._security_event("icc_amount_mismatch", transaction, mismatch)
            return await self._decline(transaction, lookup, LedgerOutcome.INVALID_AMOUNT, mismatch)
        card = lookup.card
        if card is not None and card.emv is not None and chip.psn_mismatch(icc, card.emv):
            reason = "5F34 is not the card's PAN sequence number"
            self._security_event("psn_mismatch", transaction, reason)
            return await self._decline(transaction, lookup, LedgerOutcome.INVALID_CARD, reason)
        last_atc = None if card is None else card.last_atc
        verdict = chip.check_atc(icc.atc, last_atc, self._atc_jump_logged)
        if verdict is AtcCheck.REPLAY:
            reason = f"ATC {icc.atc} not above the card's last {last_atc}"
            self._security_event("atc_replay", transaction, reason)
            return await self._decline(
                transaction, lookup, LedgerOutcome.SECURITY_VIOLATION, reason
            )
        if verdict is AtcCheck.JUMP:
            log.warning(
                "atc_jump",
                card=mask_pan(transaction.pan),
                atc=icc.atc,
                last_atc=last_atc,
            )
        return None

    async def verify_arqc(
        self, transaction: Transaction, icc: IccData, profile: EmvProfile, lookup: Lookup, *,
        request: Authorisation, deadline: Deadline,
    ) -> VerifiedArqc | Outcome:  # fmt: skip
        """The HSM recomputes the ARQC under the card's keys (derived from the profile's IMK-AC)
        and answers the ARPC of an approval, with its word for `request`'s ATC."""
        try:
            version = emv.select_cryptogram_version(
                chip.scheme(profile.scheme), icc.iad, profile_cvn=profile.cvn
            )
        except EmvError as exc:
            return self._format_error(transaction, f"cryptogram version: {exc}")
        try:
            imk = StoredKey.from_text(profile.imk_ac)
            authorised = await self._hsm.verify_arqc_for(
                imk,
                transaction.pan,
                profile.psn,
                icc.atc_bytes,
                icc.arqc,
                cvn=version.cvn,
                tags=icc.cryptogram_tags(),
                response=chip.arpc_response(version, ResponseCode.APPROVED),
                request=request,
                timeout_ms=deadline.remaining_ms(),
            )
        except EmvError as exc:
            return self._format_error(transaction, f"ICC data: {exc}")
        except KeyMaterialError as exc:
            log.error("chip_profile_unusable", card=mask_pan(transaction.pan), error=str(exc))
            return await self._decline(
                transaction, lookup, LedgerOutcome.DO_NOT_HONOUR, "card's IMK-AC unusable"
            )
        result = authorised.result
        if not result.verified:
            self._security_event("arqc_failure", transaction, f"CVN {version.cvn}")
            return await self._decline(
                transaction, lookup, LedgerOutcome.SECURITY_VIOLATION, "ARQC does not verify"
            )
        if authorised.authorisation is None:  # check_chip_data compared 9F02 with F4 already
            self._security_event("arqc_not_for_request", transaction, f"CVN {version.cvn}")
            return await self._decline(
                transaction, lookup, LedgerOutcome.SECURITY_VIOLATION, "ARQC not for this amount"
            )
        return VerifiedArqc(icc, imk, profile.psn, version, result, authorised.authorisation)

    async def with_arpc(
        self, transaction: Transaction, verified: VerifiedArqc, outcome: Outcome, *,
        timeout_ms: int,
    ) -> Outcome:  # fmt: skip
        """The answer with F55 (tag 91: the ARPC and its ARC or CSU), approved or declined: the
        card then knows the answer came from its issuer. The approval's ARPC came with the
        verification; a decline's takes one more call with its own response code."""
        data = verified.result.issuer_authentication_data
        if outcome.code is not ResponseCode.APPROVED:
            try:
                again = await self._hsm.verify_arqc(
                    verified.imk,
                    transaction.pan,
                    verified.psn,
                    verified.icc.atc_bytes,
                    verified.icc.arqc,
                    cvn=verified.version.cvn,
                    tags=verified.icc.cryptogram_tags(),
                    response=chip.arpc_response(verified.version, outcome.code),
                    timeout_ms=timeout_ms,
                )
            except HsmError as exc:
                # The decline stands without it: the card declines an answer it cannot check.
                log.error(
                    "arpc_not_generated",
                    error=str(exc),
                )
                return outcome
            data = again.issuer_authentication_data
        assert data is not None, "a verified ARQC has its ARPC"
        fields = {**outcome.fields, ICC_DATA_FIELD: chip.issuer_authentication_field(data)}
        return replace(outcome, fields=MappingProxyType(fields))

    async def _decline(
        self, transaction: Transaction, lookup: Lookup, outcome: LedgerOutcome, reason: str
    ) -> Outcome:
        result = await self._ledger.record_decline(
            lookup, outcome, now=self._now(), timeout_ms=self._write_timeout_ms
        )
        return answer(transaction, result, reason)

    def _format_error(self, transaction: Transaction, reason: str) -> Outcome:
        return refusal_logged(transaction, chip.ChipRefusal(ResponseCode.FORMAT_ERROR, reason))

    def _security_event(self, kind: str, transaction: Transaction, reason: str) -> None:
        log.warning(
            "security_event",
            event_kind=kind,
            card=mask_pan(transaction.pan),
            reason=reason,
        )


def refusal_logged(transaction: Transaction, refusal: chip.ChipRefusal) -> Outcome:
    """A refusal of the chip data, logged with the tag at fault (never a value of it)."""
    log.warning(
        "icc_data_refused",
        response_code=refusal.code.value,
        tag=refusal.tag,
        reason=refusal.reason,
    )
    return Outcome(refusal.code, reason=refusal.reason)
