"""A terminal written from docs/terminal-integration.md alone: pyiso8583's stock spec,
`cryptography`, a socket.

Nothing here imports the switch, the HSM package or the simulator: PIN blocks, the retail MAC
and key change are done from that page's description, so a mismatch with the documentation
fails this test.
"""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime
from typing import Any

import iso8583
import iso8583.specs
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from tests.e2e.conftest import PIN, StackFactory

SPEC = iso8583.specs.default


def tdes(key16: bytes) -> Cipher[modes.ECB]:
    return Cipher(TripleDES(key16 + key16[:8]), modes.ECB())


def des(key8: bytes) -> Cipher[modes.ECB]:
    return Cipher(TripleDES(key8 * 3), modes.ECB())


def ecb_encrypt(cipher: Cipher[modes.ECB], data: bytes) -> bytes:
    encryptor = cipher.encryptor()
    return encryptor.update(data) + encryptor.finalize()


def ecb_decrypt(cipher: Cipher[modes.ECB], data: bytes) -> bytes:
    decryptor = cipher.decryptor()
    return decryptor.update(data) + decryptor.finalize()


def retail_mac(key16: bytes, data: bytes) -> bytes:
    """ISO 9797-1 algorithm 3, padding method 1, as docs/terminal-integration.md describes it."""
    padded = data + b"\x00" * (-len(data) % 8)
    left, right = des(key16[:8]), des(key16[8:])
    block = bytes(8)
    for start in range(0, len(padded), 8):
        chunk = padded[start : start + 8]
        block = ecb_encrypt(left, bytes(a ^ b for a, b in zip(block, chunk, strict=True)))
    return ecb_encrypt(left, ecb_decrypt(right, block))


def pin_block_format_0(pin: str, pan: str, tpk: bytes) -> bytes:
    pin_field = bytes.fromhex(f"{len(pin):02d}{pin}".ljust(16, "F"))
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    clear = bytes(a ^ b for a, b in zip(pin_field, pan_field, strict=True))
    return ecb_encrypt(tdes(tpk), clear)


class Kiosk:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tmk: bytes
    ) -> None:
        self.reader, self.writer, self.tmk = reader, writer, tmk
        self.stan = 0
        self.tpk = self.tak = b""

    async def exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        payload, _ = iso8583.encode(message, SPEC)
        self.writer.write(struct.pack(">H", len(payload)) + payload)
        await self.writer.drain()
        length = struct.unpack(">H", await self.reader.readexactly(2))[0]
        decoded, _ = iso8583.decode(await self.reader.readexactly(length), SPEC)
        return decoded

    def base(self, mti: str) -> dict[str, Any]:
        self.stan += 1
        return {
            "t": mti,
            "7": datetime.now(UTC).strftime("%m%d%H%M%S"),
            "11": f"{self.stan:06d}",
            "41": "KIOSK001",
        }

    def maced(self, message: dict[str, Any]) -> dict[str, Any]:
        """The MAC is the last field: F128 when any field is above 64, else F64."""
        field = "128" if any(k.isdigit() and int(k) > 64 for k in message) else "64"
        message[field] = "00" * 8
        encoded, _ = iso8583.encode(dict(message), SPEC)
        message[field] = retail_mac(self.tak, bytes(encoded[:-8])).hex().upper()
        return message

    def check_mac(self, response: dict[str, Any]) -> bool:
        field = "128" if "128" in response else "64"
        encoded, _ = iso8583.encode(
            {k: v for k, v in response.items() if k not in ("p", "1")}, SPEC
        )
        expected: str = response[field]
        return retail_mac(self.tak, bytes(encoded[:-8])).hex().upper() == expected.upper()


async def test_a_client_written_from_the_documentation(make_stack: StackFactory) -> None:
    stack = await make_stack(customers=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.server.port)
    kiosk = Kiosk(reader, writer, bytes.fromhex(stack.keys.tmk_clear_hex))
    # The e2e world's terminals are named like T0001234; act as the first one.
    terminal_id = stack.world.terminals[0]
    pan = stack.customers[0].pan

    def base(mti: str) -> dict[str, Any]:
        message = kiosk.base(mti)
        message["41"] = terminal_id
        return message

    sign_on = await kiosk.exchange({**base("0800"), "70": "001"})
    assert (sign_on["t"], sign_on["39"]) == ("0810", "00")

    change = await kiosk.exchange({**base("0800"), "70": "161"})
    assert change["39"] == "00"
    f48 = change["48"]
    kiosk.tpk = ecb_decrypt(tdes(kiosk.tmk), bytes.fromhex(f48[0:32]))
    kiosk.tak = ecb_decrypt(tdes(kiosk.tmk), bytes.fromhex(f48[38:70]))
    assert ecb_encrypt(tdes(kiosk.tpk), bytes(8))[:3].hex().upper() == f48[32:38]
    assert ecb_encrypt(tdes(kiosk.tak), bytes(8))[:3].hex().upper() == f48[70:76]

    withdrawal = base("0200") | {
        "2": pan,
        "3": "010000",
        "4": "000000004000",
        "49": "978",
        "52": pin_block_format_0(PIN, pan, kiosk.tpk).hex().upper(),
    }
    withdrawal = kiosk.maced(withdrawal)
    approved = await kiosk.exchange(withdrawal)
    assert (approved["t"], approved["39"]) == ("0210", "00")
    assert kiosk.check_mac(approved)
    assert approved["54"][:4] == "0001"  # ledger balance of the default account

    original = withdrawal["t"] + withdrawal["11"] + withdrawal["7"] + "0" * 22
    reversal = kiosk.maced(
        base("0420") | {"2": pan, "3": "010000", "4": "000000004000", "49": "978", "90": original}
    )
    reversed_ = await kiosk.exchange(reversal)
    assert (reversed_["t"], reversed_["39"]) == ("0430", "00")
    assert kiosk.check_mac(reversed_)
    assert await stack.balance(stack.customers[0].checking) == 100_000
    writer.close()
