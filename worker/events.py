"""Detections -> one enrichment event (schema v1), and the DLQ record for what failed.

The event layout is documented field by field in docs/event-schema.md; a change here is a
change there, and a breaking one bumps SCHEMA_VERSION.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from typing import Any
from urllib.parse import urlsplit

from worker import __version__
from worker.cloudflare.models import DISPOSITIONS, VALIDATION_RESULTS, Detections, Header
from worker.inputs import EnrichRequest
from worker.retry import Attempts

SCHEMA_VERSION = 1
DLQ_SCHEMA_VERSION = 1
DLQ_MAX_ORIGINAL_BYTES = 256 * 1024
"""Originals above this are cut in DLQ records (base64 grows them by a third)."""
EVENT_ID_NAMESPACE = uuid.UUID("6f1c1f4e-8f0e-4d4e-9a57-3c1b8f0f2a11")

# Event key -> header name, the headers a SOC analyst pivots on.
SELECTED_HEADERS = {
    "from": "from",
    "to": "to",
    "cc": "cc",
    "reply_to": "reply-to",
    "subject": "subject",
    "message_id": "message-id",
    "date": "date",
}


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input message came from."""

    topic: str
    partition: int
    offset: int


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def event_id(account_id: str, investigate_id: str) -> str:
    """Deterministic event id: the same message enriched twice gets the same id.

    ``uuid.uuid5(EVENT_ID_NAMESPACE, "v1/<account>/<id>")``, computed and written without
    building a ``uuid.UUID`` (which was most of its cost on every event).
    """
    name = f"v{SCHEMA_VERSION}/{account_id}/{investigate_id}".encode()
    raw = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_rfc3339() -> str:
    """The current UTC time with milliseconds, as events and DLQ records write it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_event(
    detections: Detections,
    request: EnrichRequest,
    source: Source | None,
    *,
    on_unknown: Callable[[str, str], None] = lambda field, value: None,
) -> dict[str, Any]:
    """Flatten one detections answer into an enrichment event (schema v1)."""
    d = detections
    _check_enum("final_disposition", d.final_disposition, DISPOSITIONS, on_unknown)
    sender = d.sender_info
    validation = d.validation
    if validation is not None:
        for name in ("spf", "dkim", "dmarc"):
            _check_enum(
                f"validation.{name}", getattr(validation, name), VALIDATION_RESULTS, on_unknown
            )
    for att in d.attachments:
        _check_enum("attachments.detection", att.detection, DISPOSITIONS, on_unknown)
    findings = d.findings or []
    for finding in findings:
        _check_enum("findings.detection", finding.detection, DISPOSITIONS, on_unknown)
    scores = [f.score for f in findings if f.score is not None]
    hrefs = [link.href for link in d.links if link.href]
    return {
        "event_id": event_id(request.account_id, request.investigate_id),
        "schema_version": SCHEMA_VERSION,
        "investigate_id": request.investigate_id,
        "account_id": request.account_id,
        "enriched_at": now_rfc3339(),
        "source": None
        if source is None
        else {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "final_disposition": d.final_disposition,
        "action": d.action,
        "threat_categories": [c.name for c in d.threat_categories if c.name is not None],
        "sender": {
            "ip": sender.ip if sender else None,
            "as_number": sender.as_number if sender else None,
            "as_name": sender.as_name if sender else None,
            "geo": sender.geo if sender else None,
            "pld": sender.pld if sender else None,
        },
        "validation": {
            "spf": validation.spf if validation else None,
            "dkim": validation.dkim if validation else None,
            "dmarc": validation.dmarc if validation else None,
            "comment": validation.comment if validation else None,
        },
        "attachments": {
            "count": len(d.attachments),
            "names": [a.filename or a.name for a in d.attachments],
            "content_types": [a.content_type for a in d.attachments],
            "sizes": [a.size for a in d.attachments],
            "md5": [a.md5 for a in d.attachments],
            "sha1": [a.sha1 for a in d.attachments],
            "sha256": [a.sha256 for a in d.attachments],
            "detections": [a.detection for a in d.attachments],
            "encrypted": [a.encrypted for a in d.attachments],
        },
        "links": {
            "count": len(d.links),
            "hrefs": hrefs,
            "domains": _domains(hrefs),
        },
        "findings": {
            "count": len(findings),
            "max_score": max(scores) if scores else None,
            "items": [f.model_dump() for f in findings],
        },
        "headers": _selected_headers(d.headers),
        "context": request.context,
    }


def build_dlq_record(
    *,
    reason: str,
    detail: str,
    source: Source | None,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int | None = None,
    investigate_id: str | None = None,
    attempts: Attempts | None = None,
    max_original_bytes: int = DLQ_MAX_ORIGINAL_BYTES,
) -> dict[str, Any]:
    """A DLQ record: why, where from, and the original bytes (base64) kept exactly.

    An original larger than ``max_original_bytes`` is cut to that size (and its full size
    and SHA-256 are recorded), so that the record always fits in a Kafka message: a DLQ
    record the broker refuses would hold the partition's commits for good.
    """
    truncated = any(b is not None and len(b) > max_original_bytes for b in (key, value))
    return {
        "dlq_schema_version": DLQ_SCHEMA_VERSION,
        "reason": reason,
        "detail": detail,
        "failed_at": now_rfc3339(),
        "source": None
        if source is None
        else {
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "timestamp_ms": timestamp_ms,
        },
        "investigate_id": investigate_id,
        "original_key_b64": _b64(key, max_original_bytes),
        "original_value_b64": _b64(value, max_original_bytes),
        "original_truncated": truncated,
        "original_value_size": None if value is None else len(value),
        "original_value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "attempts": attempts.count if attempts else 0,
        "first_attempt_at": attempts.first_at if attempts else None,
        "last_attempt_at": attempts.last_at if attempts else None,
        "last_http_status": attempts.last_status if attempts else None,
        "last_error_codes": list(attempts.last_codes) if attempts else [],
        "worker_version": __version__,
    }


def _b64(data: bytes | None, limit: int) -> str | None:
    return None if data is None else base64.b64encode(data[:limit]).decode()


def _check_enum(
    field: str, value: str | None, known: frozenset[str], report: Callable[[str, str], None]
) -> None:
    if value is not None and value not in known:
        report(field, value)


def _domains(hrefs: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for href in hrefs:
        try:
            host = urlsplit(href.strip()).hostname
        except ValueError:
            continue
        host = (host or "").lower().rstrip(".")
        if host:  # checked after the trailing dots go: "http://./" has no host name
            seen.setdefault(host, None)
    return list(seen)


def _selected_headers(headers: list[Header]) -> dict[str, str | None]:
    by_name: dict[str, str] = {}
    for header in headers:
        by_name.setdefault(header.name.strip().lower(), header.value)
    return {key: _decode(by_name.get(name)) for key, name in SELECTED_HEADERS.items()}


# An RFC 2047 encoded word, as email.header.decode_header finds them.
_ENCODED_WORD = re.compile(r"=\?([^?]*?)\?([qQbB])\?(.*?)\?=", re.MULTILINE)


def _decode(value: str | None) -> str | None:
    """Decode RFC 2047 encoded words (=?utf-8?b?...?=); keep the raw value if that fails."""
    if value is None or "=?" not in value:
        return value
    if not all(_valid_b_word(m) for m in _ENCODED_WORD.finditer(value)):
        return value
    try:
        decoded = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, HeaderParseError):
        return value
    return decoded or value  # a broken encoded word decodes to nothing: keep the raw text


def _valid_b_word(word: re.Match[str]) -> bool:
    """A B (base64) word must be real base64, padding included.

    decode_header pads a short word and skips characters outside the alphabet, which turns
    a cut or mangled word into a few wrong characters; such a value is kept raw instead.
    """
    if word.group(2) not in "bB":
        return True
    text = word.group(3)
    if len(text) % 4:
        return False
    try:
        base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error
        return False
    return True
