"""Chain heads signed outside the database, so that not even its owner can rewrite history
unnoticed.

An anchor is one line of an append-only file: the time, every chain's head (lane, block number,
hash) and an Ed25519 signature over them, made with a key the database never sees. A publisher
(the switch, or `python -m ledger anchors publish`) appends one whenever the heads have moved.
`audit verify --anchors` then checks that every anchored block is still in the database with the
same hash: a journal rehashed after an edit, a cut tail, a deleted chain or a truncated journal
all leave an anchored block missing or changed.

The signed bytes are the UTF-8 text `kiosk-switch anchor v1\\nat=<ISO time>\\n` followed by one
line `head=<lane>:<seq>:<hash hex>\\n` per lane in lane order (see docs/audit.md).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.errors import LedgerError
from ledger.journal import Head
from ledger.migrations import Connection


class AnchorError(LedgerError):
    """An anchor file or key that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Anchor:
    at: datetime
    heads: tuple[Head, ...]

    def signed_bytes(self) -> bytes:
        lines = [f"kiosk-switch anchor v1\nat={self.at.isoformat()}\n"]
        lines += [f"head={h.lane}:{h.seq}:{h.hash.hex()}\n" for h in self.heads]
        return "".join(lines).encode()


def generate_key(private_path: Path, public_path: Path) -> None:
    """A new signing key (PKCS#8 PEM, readable by its owner only) and its public half."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(private_pem)
    public_path.write_bytes(public_pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise AnchorError(f"{path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AnchorError(f"{path}: the anchor key must be Ed25519")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AnchorError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AnchorError(f"{path}: the anchor key must be Ed25519")
    return key


async def current_heads(conn: Connection, *, timeout_ms: int) -> tuple[Head, ...]:
    """Every chain's head, through the function the switch's role may execute."""
    rows = await conn.fetch("SELECT * FROM ledger.audit_heads_now()", timeout=timeout_ms / 1000)
    return tuple(Head(r["lane"], r["seq"], bytes(r["hash"])) for r in rows)


def anchor_line(anchor: Anchor, key: Ed25519PrivateKey) -> str:
    record = {
        "at": anchor.at.isoformat(),
        "heads": [[h.lane, h.seq, h.hash.hex()] for h in anchor.heads],
        "signature": key.sign(anchor.signed_bytes()).hex(),
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def append(path: Path, line: str) -> None:
    """Appended and flushed to disk before it counts as published."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_anchors(path: Path, key: Ed25519PublicKey) -> list[Anchor]:
    """Every anchor in the file, each signature checked; raises AnchorError naming the line."""
    anchors = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AnchorError(f"{path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            anchor = Anchor(
                datetime.fromisoformat(record["at"]),
                tuple(
                    Head(int(lane), int(seq), bytes.fromhex(digest))
                    for lane, seq, digest in record["heads"]
                ),
            )
            key.verify(bytes.fromhex(record["signature"]), anchor.signed_bytes())
        except InvalidSignature:
            raise AnchorError(f"{path}:{number}: the signature does not verify") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise AnchorError(f"{path}:{number}: not an anchor ({exc})") from None
        anchors.append(anchor)
    return anchors


def latest_heads(anchors: Iterable[Anchor]) -> dict[int, Head]:
    """The highest anchored block of each lane. Checking it checks everything before it: each
    block's hash covers the previous one's, so any edit before it changes it."""
    latest: dict[int, Head] = {}
    for anchor in anchors:
        for head in anchor.heads:
            if head.seq > latest.get(head.lane, Head(head.lane, -1, b"")).seq:
                latest[head.lane] = head
    return latest


class Publisher:
    """Appends the heads, signed, whenever they have moved since the last anchor it wrote."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        path: Path,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._key = key
        self._path = path
        self._clock = clock
        self.last: tuple[Head, ...] = ()

    async def publish_if_moved(self, conn: Connection, *, timeout_ms: int) -> bool:
        heads = await current_heads(conn, timeout_ms=timeout_ms)
        if heads == self.last:
            return False
        line = anchor_line(Anchor(self._clock(), heads), self._key)
        await asyncio.to_thread(append, self._path, line)  # fsync: off the event loop
        self.last = heads
        return True
