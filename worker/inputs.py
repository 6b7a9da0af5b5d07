"""Turn the bytes of an input message into an EnrichRequest, or an InputError with a reason.

Everything here is untrusted: a message may be empty, binary, huge, JSON of the wrong type,
or carry an id crafted to change the API path. An id is accepted only if every character is
in a small allow-list, so that it can only ever be one path segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from worker.errors import InputError

MAX_ID_LENGTH = 256
"""Longest investigate id accepted. Real ids are under 100 characters."""

# Letters, digits and the punctuation seen in real ids (- : @ . _ + =). No '/', '\\', '%',
# '?', '#', whitespace or control characters, so nothing can leave the path segment.
_ID_CHARS = re.compile(r"[A-Za-z0-9\-:@._+=]+")
_ACCOUNT_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class EnrichRequest:
    """One id to enrich, with the account it belongs to and the upstream's context."""

    investigate_id: str
    account_id: str
    context: Any = None


def validate_investigate_id(value: object) -> str:
    """Return the id if it is safe to use as one path segment, else raise InputError."""
    if not isinstance(value, str):
        raise InputError("wrong_type", f"investigate_id must be a string, got {_kind(value)}")
    if not value:
        raise InputError("invalid_id", "investigate_id is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InputError("invalid_id", f"investigate_id is {len(value)} chars, max {MAX_ID_LENGTH}")
    if value in (".", "..") or not _ID_CHARS.fullmatch(value):
        raise InputError("invalid_id", f"investigate_id {_preview(value)} has forbidden characters")
    return value


def validate_account_id(value: object) -> str:
    """Return the account id if it is 32 lowercase hex characters, else raise InputError."""
    if not isinstance(value, str) or not _ACCOUNT_ID.fullmatch(value):
        raise InputError("invalid_account_id", "account_id must be 32 lowercase hex characters")
    return value


_JSON_LITERALS = frozenset({"null", "true", "false"})
"""Bare JSON values no id could be: a producer that wrote JSON without an id (wrong_type).
A bare number stays an id: nothing says an id cannot be all digits."""


def parse_message(
    value: bytes | None, *, default_account_id: str | None, max_bytes: int
) -> EnrichRequest:
    """Parse one input message: a bare id, or a JSON object with ``investigate_id``."""
    if value is None:
        raise InputError("tombstone", "message has no value (tombstone)")
    if len(value) > max_bytes:
        raise InputError("oversized", f"message is {len(value)} bytes, max {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("undecodable", f"not UTF-8 at byte {exc.start}") from None
    text = text.lstrip("\ufeff").strip()  # a byte-order mark from a file-based producer
    if not text:
        raise InputError("empty", "message is empty or only whitespace")
    if text[0] in '{["' or text in _JSON_LITERALS:
        return _parse_json(text, default_account_id)
    return EnrichRequest(
        investigate_id=validate_investigate_id(text),
        account_id=_account(None, default_account_id),
    )


def _parse_json(text: str, default_account_id: str | None) -> EnrichRequest:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InputError("malformed_json", str(exc)) from None
    if isinstance(doc, str):
        return EnrichRequest(validate_investigate_id(doc), _account(None, default_account_id))
    if not isinstance(doc, dict):
        raise InputError("wrong_type", f"expected a JSON object or string, got {_kind(doc)}")
    if "investigate_id" not in doc:
        raise InputError("missing_id", "JSON object has no investigate_id")
    investigate_id = validate_investigate_id(doc["investigate_id"])
    context = doc.get("context")
    if isinstance(context, dict | list):
        try:  # the event must be writable: checked now, before an API call is spent
            orjson.dumps(context)
        except orjson.JSONEncodeError as exc:
            raise InputError("invalid_context", f"context cannot be written back: {exc}") from None
    return EnrichRequest(
        investigate_id=investigate_id,
        account_id=_account(doc.get("account_id"), default_account_id),
        context=context,
    )


def _account(value: object, default: str | None) -> str:
    if value is None:
        if default is None:
            raise InputError(
                "missing_account_id",
                "message has no account_id and cloudflare.account_id is not set",
            )
        return default
    return validate_account_id(value)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _preview(value: str) -> str:
    """A short, printable rendering of an untrusted id for logs and DLQ details."""
    return repr(value[:64] + ("…" if len(value) > 64 else ""))
