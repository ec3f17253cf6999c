"""``NetworkHSM``: the HSM interface over the host-command protocol, with a connection pool per
HSM address, a deadline per call, failover across addresses and background health checks.

Failover happens only on transport failure (refused, reset, closed, no answer in time). An HSM
that answers with an error code raises that error's type at once: another HSM would say the same.
With ``tls`` (``hsm.tls.client_context``), a failed handshake (an HSM whose certificate does not
verify, or one that refuses ours) is a transport failure too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import Sequence

import structlog

from hsm import commands as cmd
from hsm import emv, wire
from hsm.api import AuthorisedArqc, PinKey, PinMethod, SessionKeys, Verification
from hsm.authorisation import Authorisation
from hsm.commands import Fields, hex_of
from hsm.crypto import Algorithm
from hsm.emv import ArpcResponse, ArqcResult, EmvTags
from hsm.errors import ERRORS_BY_CODE, HsmError, HsmTimeout
from hsm.keys import KeyRole, StoredKey
from hsm.pinblock import PinBlockFormat
from switch.iso8583.spec import Dialect

log = structlog.get_logger("hsm.client")

Address = tuple[str, int]
_PASSES_MAX = 1000  # bounds the retry loop even if a clock misbehaves
_TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, TimeoutError, ConnectionError)
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _EndpointFailed(Exception):
    """This address failed (refused, reset, closed, or silent past the attempt timeout)."""


class _Endpoint:
    """One HSM address: a bounded pool of open connections and a health flag."""

    def __init__(self, address: Address, pool_size: int, tls: ssl.SSLContext | None) -> None:
        self.address = address
        self._tls = tls
        self.healthy = True
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(pool_size)

    async def call(self, request: wire.Message, attempt_s: float) -> wire.Message:
        """One exchange. Waiting for a free pooled connection is bounded by the caller's
        deadline only; the attempt timeout covers connecting and the exchange itself."""
        async with self._slots:
            conn: Connection | None = None
            try:
                async with asyncio.timeout(attempt_s):
                    conn = self._idle.pop() if self._idle else await self._open()
                    reply = await self._exchange(conn, request)
            except _TRANSPORT_ERRORS as exc:
                if conn is not None:
                    conn[1].close()
                raise _EndpointFailed from exc
            except BaseException:  # cancelled by the caller's deadline: the stream is unusable
                if conn is not None:
                    conn[1].close()
                raise
            self._idle.append(conn)
            return reply

    async def _open(self) -> Connection:
        return await asyncio.open_connection(*self.address, ssl=self._tls)

    @staticmethod
    async def _exchange(conn: Connection, request: wire.Message) -> wire.Message:
        reader, writer = conn
        writer.write(wire.encode(request))
        await writer.drain()
        header = await reader.readexactly(wire.LENGTH_HEADER)
        reply = wire.decode(await reader.readexactly(wire.frame_length(header)))
        if reply.request_id != request.request_id or reply.command != request.command:
            raise ConnectionError("HSM reply does not match the request")
        return reply

    def mark_down(self) -> None:
        if self.healthy:
            log.warning("hsm_endpoint_down", host=self.address[0], port=self.address[1])
        self.healthy = False
        self.close_idle()

    def close_idle(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

    def mark_up(self) -> None:
        if not self.healthy:
            log.info("hsm_endpoint_up", host=self.address[0], port=self.address[1])
        self.healthy = True


class NetworkHSM:
    """HSM client. Use ``async with`` or call ``close()``."""

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        pool_size: int = 4,
        timeout_ms: int = 1000,
        attempt_timeout_ms: int = 500,
        health_interval_ms: int = 500,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("NetworkHSM needs at least one HSM address")
        if pool_size < 1 or min(timeout_ms, attempt_timeout_ms, health_interval_ms) < 1:
            raise ValueError("pool size and every interval must be positive")
        self._endpoints = [_Endpoint((host, port), pool_size, tls) for host, port in addresses]
        self._timeout_ms = timeout_ms
        self._attempt_s = attempt_timeout_ms / 1000
        self._health_s = health_interval_ms / 1000
        self._ids = itertools.count(1)
        self._rotation = itertools.count()
        self._health_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NetworkHSM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for endpoint in self._endpoints:
            endpoint.close_idle()

    def _order(self) -> list[_Endpoint]:
        """Healthy endpoints first, rotated to spread load; then the rest, in case they are back."""
        start = next(self._rotation) % len(self._endpoints)
        rotated = self._endpoints[start:] + self._endpoints[:start]
        return [e for e in rotated if e.healthy] + [e for e in rotated if not e.healthy]

    async def call(self, command: str, fields: Fields, *, timeout_ms: int | None = None) -> Fields:
        """Send one host command; return the reply fields or raise its typed error."""
        self._start_health_checks()
        loop = asyncio.get_running_loop()
        budget_s = (timeout_ms or self._timeout_ms) / 1000
        deadline = loop.time() + budget_s
        pause_s = max(self._health_s / 10, budget_s / _PASSES_MAX)  # passes fit the budget
        request = wire.Message(command, next(self._ids) % wire.REQUEST_ID_MAX, fields=fields)
        for _ in range(_PASSES_MAX):
            for endpoint in self._order():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        reply = await endpoint.call(request, self._attempt_s)
                except _EndpointFailed:
                    endpoint.mark_down()
                    continue
                except TimeoutError:
                    break  # the call's deadline, not this address's fault
                return _result(reply)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, pause_s))
        raise HsmTimeout(f"no HSM answered command {command} within the deadline")

    def _start_health_checks(self) -> None:
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_s)
            for endpoint in self._endpoints:
                if not endpoint.healthy:
                    await self._probe(endpoint)

    async def _probe(self, endpoint: _Endpoint) -> None:
        request = wire.Message(cmd.HEALTH, next(self._ids) % wire.REQUEST_ID_MAX)
        try:
            reply = await endpoint.call(request, self._attempt_s)
        except _EndpointFailed:
            return
        if reply.error == wire.OK:
            endpoint.mark_up()

    # --- the HSM interface -----------------------------------------------------------------

    async def health(self, *, timeout_ms: int | None = None) -> str:
        """The LMK check value of whichever HSM answers."""
        (kcv,) = await self.call(cmd.HEALTH, (), timeout_ms=timeout_ms)
        return kcv

    async def verify_pin(
        self,
        pin_block: bytes,
        pan: str,
        key: PinKey,
        pin_block_format: PinBlockFormat,
        verification: Verification,
        *,
        timeout_ms: int | None = None,
    ) -> bool:
        fields: Fields = (hex_of(pin_block), pan, str(pin_block_format.value))
        fields += cmd.pin_key_fields(key) + cmd.verification_fields(verification)
        return cmd.is_yes(await self.call(cmd.VERIFY_PIN, fields, timeout_ms=timeout_ms))

    async def verify_pin_for(
        self,
        pin_block: bytes,
        pan: str,
        key: PinKey,
        pin_block_format: PinBlockFormat,
        verification: Verification,
        *,
        request: Authorisation,
        timeout_ms: int | None = None,
    ) -> bytes | None:
        fields = cmd.authorisation_fields(request)
        fields += (hex_of(pin_block), pan, str(pin_block_format.value))
        fields += cmd.pin_key_fields(key) + cmd.verification_fields(verification)
        (token,) = await self.call(cmd.VERIFY_PIN_FOR, fields, timeout_ms=timeout_ms)
        return cmd.bytes_of(token) if token else None

    async def authorisation_check_value(self, *, timeout_ms: int | None = None) -> str:
        (kcv,) = await self.call(cmd.AUTHORISATION_CHECK, (), timeout_ms=timeout_ms)
        return kcv

    async def derive_pin_verification_data(
        self,
        pvk: StoredKey,
        pan: str,
        clear_pin: str,
        method: PinMethod,
        *,
        timeout_ms: int | None = None,
    ) -> str:
        fields = (pvk.to_text(), pan, clear_pin, *cmd.method_fields(method))
        (value,) = await self.call(cmd.DERIVE_PIN_DATA, fields, timeout_ms=timeout_ms)
        return value

    async def translate_pin(
        self,
        pin_block: bytes,
        pan: str,
        *,
        source: PinKey,
        source_format: PinBlockFormat,
        destination: StoredKey,
        destination_format: PinBlockFormat,
        timeout_ms: int | None = None,
    ) -> bytes:
        fields: Fields = (hex_of(pin_block), pan, str(source_format.value))
        fields += cmd.pin_key_fields(source)
        fields += (destination.to_text(), str(destination_format.value))
        (block,) = await self.call(cmd.TRANSLATE_PIN, fields, timeout_ms=timeout_ms)
        return cmd.bytes_of(block)

    async def generate_mac(
        self, tak: StoredKey, data: bytes, *, timeout_ms: int | None = None
    ) -> bytes:
        fields = (tak.to_text(), hex_of(data))
        (mac,) = await self.call(cmd.GENERATE_MAC, fields, timeout_ms=timeout_ms)
        return cmd.bytes_of(mac)

    async def verify_mac(
        self, tak: StoredKey, data: bytes, mac: bytes, *, timeout_ms: int | None = None
    ) -> bool:
        fields = (tak.to_text(), hex_of(data), hex_of(mac))
        return cmd.is_yes(await self.call(cmd.VERIFY_MAC, fields, timeout_ms=timeout_ms))

    async def reversal_word(
        self,
        tak: StoredKey,
        data: bytes,
        mac: bytes,
        *,
        dialect: Dialect,
        timeout_ms: int | None = None,
    ) -> bytes | None:
        fields = (tak.to_text(), hex_of(data), hex_of(mac), *cmd.dialect_fields(dialect))
        (word,) = await self.call(cmd.REVERSAL_WORD, fields, timeout_ms=timeout_ms)
        return cmd.bytes_of(word) if word else None

    async def generate_session_keys(
        self, tmk: StoredKey, *, terminal_id: str, timeout_ms: int | None = None
    ) -> SessionKeys:
        fields = (tmk.to_text(), terminal_id)
        return cmd.session_keys_of(await self.call(cmd.SESSION_KEYS, fields, timeout_ms=timeout_ms))

    async def verify_arqc(
        self,
        imk: StoredKey,
        pan: str,
        psn: str,
        atc: bytes,
        arqc: bytes,
        *,
        cvn: int,
        tags: EmvTags,
        response: ArpcResponse,
        timeout_ms: int | None = None,
    ) -> ArqcResult:
        # Only the tags the CVN reads travel (never, say, track 2 data from the same field 55).
        tags_text = cmd.tags_field(emv.cryptogram_version(cvn), tags)
        fields: Fields = (imk.to_text(), pan, psn, hex_of(atc), hex_of(arqc), str(cvn), tags_text)
        fields += cmd.response_fields(response)
        reply = await self.call(cmd.VERIFY_ARQC, fields, timeout_ms=timeout_ms)
        return cmd.arqc_result_of(reply)

    async def verify_arqc_for(
        self,
        imk: StoredKey,
        pan: str,
        psn: str,
        atc: bytes,
        arqc: bytes,
        *,
        cvn: int,
        tags: EmvTags,
        response: ArpcResponse,
        request: Authorisation,
        timeout_ms: int | None = None,
    ) -> AuthorisedArqc:
        tags_text = cmd.tags_field(emv.cryptogram_version(cvn), tags)
        fields: Fields = cmd.authorisation_fields(request)
        fields += (imk.to_text(), pan, psn, hex_of(atc), hex_of(arqc), str(cvn), tags_text)
        fields += cmd.response_fields(response)
        reply = await self.call(cmd.VERIFY_ARQC_FOR, fields, timeout_ms=timeout_ms)
        return cmd.authorised_arqc_of(reply)

    async def generate_key(
        self,
        role: KeyRole,
        algorithm: Algorithm = Algorithm.TDES,
        length: int = 16,
        *,
        timeout_ms: int | None = None,
    ) -> StoredKey:
        fields = (role.value, algorithm.value, str(length))
        (text,) = await self.call(cmd.GENERATE_KEY, fields, timeout_ms=timeout_ms)
        return StoredKey.from_text(text)

    async def key_check_value(self, key: StoredKey, *, timeout_ms: int | None = None) -> str:
        (kcv,) = await self.call(cmd.CHECK_VALUE, (key.to_text(),), timeout_ms=timeout_ms)
        return kcv

    async def import_key(
        self, key_block: str, kbpk: StoredKey, role: KeyRole, *, timeout_ms: int | None = None
    ) -> StoredKey:
        fields = (key_block, kbpk.to_text(), role.value)
        (text,) = await self.call(cmd.IMPORT_KEY, fields, timeout_ms=timeout_ms)
        return StoredKey.from_text(text)

    async def export_key(
        self,
        key: StoredKey,
        kbpk: StoredKey,
        version: str = "B",
        *,
        timeout_ms: int | None = None,
    ) -> str:
        fields = (key.to_text(), kbpk.to_text(), version)
        (block,) = await self.call(cmd.EXPORT_KEY, fields, timeout_ms=timeout_ms)
        return block

    async def pan_hash(self, pan: str, *, timeout_ms: int | None = None) -> bytes:
        (digest,) = await self.call(cmd.PAN_HASH, (pan,), timeout_ms=timeout_ms)
        return cmd.bytes_of(digest)


def _result(reply: wire.Message) -> Fields:
    if reply.error == wire.OK:
        return reply.fields
    error = ERRORS_BY_CODE.get(reply.error, HsmError)
    raise error(reply.fields[0] if reply.fields else f"HSM error {reply.error}")
