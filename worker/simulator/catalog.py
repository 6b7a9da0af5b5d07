"""The ids the simulator knows, their serialized detections bodies, and the search pages.

A catalogue id looks like a real one (``<16 base62>-<timestamp>-<8-digit index>``) and is
derived from (seed, index), so "is this id known" needs no table. Bodies come from a
bounded set of variants per schema shape, chosen by the id, with the id's own prefix
spliced into its headers: serving a new id costs a few microseconds, not the ~70 us of
drawing a payload, which keeps the simulator off the critical path of a benchmark.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any

import orjson

from worker.simulator import payloads

_ID_MARKER = "%%SIM-LOCAL-ID%%"  # 16 characters: stands for the id's prefix in a variant
_TO_BASE62 = bytes(ord(payloads.BASE62[b % 62]) for b in range(256))  # 4/256 bias: fine
_CATEGORY_TAGS = {
    1234: "IPReputation",
    2001: "CredentialHarvester",
    2002: "MaliciousLink",
    2003: "BEC",
    2004: "SpoofedSender",
    2005: "SuspiciousAttachment",
    2006: "NewDomainSender",
    2007: "DisplayNameImpersonation",
}


# --- ids ----------------------------------------------------------------------------------------


def catalog_id(seed: int, index: int) -> str:
    """The ``index``-th investigate id the simulator knows for ``seed``."""
    digest = hashlib.blake2b(f"id:{seed}:{index}".encode(), digest_size=16).digest()
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(payloads.EPOCH + 37 * index))
    return f"{digest.translate(_TO_BASE62).decode()}-{when}-{index:08d}"


def catalog_index(seed: int, investigate_id: str) -> int | None:
    """The index of a catalogue id of this seed (whatever the catalogue size), else None."""
    head, sep, digits = investigate_id.rpartition("-")
    if not sep or len(head) != 36 or len(digits) < 8 or not digits.isascii():
        return None
    if not digits.isdigit():
        return None
    index = int(digits)
    return index if catalog_id(seed, index) == investigate_id else None


def is_catalog_id(seed: int, investigate_id: str, catalog_size: int) -> bool:
    """True if the id is one of the first ``catalog_size`` ids of this seed."""
    index = catalog_index(seed, investigate_id)
    return index is not None and index < catalog_size


def id_fraction(seed: int, investigate_id: str, salt: str = "") -> float:
    """A stable number in [0, 1) for (seed, id), for choices that are a property of the id."""
    digest = hashlib.blake2b(f"{salt}{seed}:{investigate_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# --- detections bodies ------------------------------------------------------------------------


class Bodies:
    """The serialized 200 body of the detections call for any id, deterministic per seed.

    ``variants`` > 0: each shape has that many payloads, drawn once and kept; an id uses
    the one its hash picks, with its own prefix in the Message-ID and Received headers.
    ``variants`` = 0: every id gets a payload of its own (slower; nothing is kept).
    """

    def __init__(
        self,
        *,
        seed: int,
        shape_2025_ratio: float,
        null_ratio: float,
        extra_keys_ratio: float,
        variants: int,
    ) -> None:
        self.seed = seed
        self.shape_2025_ratio = shape_2025_ratio
        self.null_ratio = null_ratio
        self.extra_keys_ratio = extra_keys_ratio
        self.variants = variants
        self._parts: dict[tuple[bool, int], list[bytes]] = {}

    def is_2025(self, investigate_id: str) -> bool:
        """Whether this id answers in the older 2025 shape (a property of the id)."""
        return id_fraction(self.seed, investigate_id) < self.shape_2025_ratio

    def body(self, investigate_id: str) -> bytes:
        """The bytes of the whole 200 body for this id."""
        shape_2025 = self.is_2025(investigate_id)
        if self.variants <= 0:
            return orjson.dumps(self._draw(investigate_id, shape_2025, None))
        variant = int(id_fraction(self.seed, investigate_id, "variant:") * self.variants)
        parts = self._parts.get((shape_2025, variant))
        if parts is None:
            doc = self._draw(_ID_MARKER, shape_2025, variant)
            parts = orjson.dumps(doc).split(_ID_MARKER.encode())
            self._parts[(shape_2025, variant)] = parts
        return orjson.dumps(investigate_id[:16])[1:-1].join(parts)

    def document(self, investigate_id: str) -> dict[str, Any]:
        """The body of this id as a JSON document."""
        doc: dict[str, Any] = orjson.loads(self.body(investigate_id))
        return doc

    def _draw(self, investigate_id: str, shape_2025: bool, variant: int | None) -> dict[str, Any]:
        return payloads.detections_body(
            self.seed,
            investigate_id,
            shape_2025=shape_2025,
            null_ratio=self.null_ratio,
            extra_keys_ratio=self.extra_keys_ratio,
            variant=variant,
        )


# --- search -------------------------------------------------------------------------------------


def encode_cursor(index: int, seed: int) -> str:
    """The opaque cursor of the search page that starts at catalogue ``index``."""
    return base64.urlsafe_b64encode(f"v1:{seed}:{index}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, seed: int) -> int | None:
    """The catalogue index a cursor stands for, or None if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    version, _, rest = raw.partition(":")
    cursor_seed, _, index = rest.partition(":")
    if version != "v1" or cursor_seed != str(seed) or not (index.isascii() and index.isdigit()):
        return None
    return int(index)


def search_item(investigate_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """One message of the search call's ``result``, consistent with its detections body."""
    result = body["result"]
    headers = {h["name"]: h["value"] for h in result["headers"]}
    postfix_id, _, rest = investigate_id.partition("-")
    when = rest[:19].replace("T", " ") if len(rest) >= 19 else "2026-01-05 10:00:00"
    sender = headers.get("From", "")
    display, bracket, address = sender.rpartition("<")
    if not bracket:
        display, address = "", sender
    address = address.rstrip(">").strip()
    validation = {k: result["validation"].get(k) for k in ("comment", "dkim", "dmarc", "spf")}
    disposition = result.get("final_disposition")
    return {
        "id": investigate_id,
        "postfix_id": postfix_id,
        "ts": when,
        "scanned_at": when.replace(" ", "T") + "Z",
        "message_id": headers.get("Message-ID", f"<{postfix_id}@example.com>"),
        "client_recipients": ["j.doe@corp.example"],
        "detection_reasons": [c["name"] for c in result["threat_categories"] if c.get("name")],
        "action_log": [],
        "is_quarantined": result["action"] == "QUARANTINED",
        "is_phish_submission": False,
        "properties": {},
        "alert_id": f"{postfix_id}-{when.replace(' ', 'T')}" if disposition else None,
        "delivery_mode": "DIRECT",
        "edf_hash": None,
        "envelope_from": address or None,
        "envelope_to": ["j.doe@corp.example"],
        "final_disposition": disposition,
        "from": address or None,
        "from_name": display.strip().strip('"') or None,
        "sent_date": when,
        "subject": headers.get("Subject"),
        "threat_categories": [
            _CATEGORY_TAGS.get(c["id"], "Other") for c in result["threat_categories"] if "id" in c
        ],
        "to": ["j.doe@corp.example"],
        "to_name": ["J. Doe"],
        "validation": validation,
    }
