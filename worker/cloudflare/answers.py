"""Classify one HTTP answer of the detections call: Detections, or the right ApiError.

This is the single place that decides what a status, an error code or a malformed body
means for the message (DLQ), for a retry, or for the whole worker (auth, rate limit).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from worker.cloudflare.models import Detections
from worker.errors import (
    ApiRejectedError,
    AuthError,
    InvalidResponseError,
    NotFoundError,
    RateLimitedError,
    TransientApiError,
)

NOT_FOUND_CODES = frozenset({7000, 7003})
AUTH_CODES = frozenset({10000, 6003})
RATE_LIMIT_CODE = 971


class Answer(NamedTuple):
    """A successful answer: its detections, and the JSON body they were parsed from."""

    detections: Detections
    body: bytes


def parse_answer(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    default_retry_after_s: float,
) -> Detections:
    """Return the detections of a successful answer or raise the ApiError it stands for."""
    doc = _json_or_none(body)
    if status == 200 and isinstance(doc, dict) and doc.get("success") is True:
        # A success answer may still list errors or messages (the API reference's own
        # example does): they are informational, and classify nothing.
        return _detections(doc, status)
    codes = _error_codes(doc)
    code_list = tuple(sorted(codes))
    detail = _error_text(doc, status)
    if status == 429 or RATE_LIMIT_CODE in codes:
        retry_after = parse_retry_after(headers.get("retry-after"))
        raise RateLimitedError(
            detail,
            status=status,
            codes=code_list,
            retry_after_s=default_retry_after_s if retry_after is None else retry_after,
        )
    if status in (401, 403) or codes & AUTH_CODES:
        raise AuthError(detail, status=status, codes=code_list)
    should_retry = (headers.get("x-should-retry") or "").lower()
    if status in (408, 409) or status >= 500 or (status >= 400 and should_retry == "true"):
        raise TransientApiError(
            detail,
            status=status,
            codes=code_list,
            retry_after_s=parse_retry_after(headers.get("retry-after")),
        )
    if not _is_envelope(doc):
        # Cloudflare's API answers in its JSON envelope; anything else (an HTML page, an
        # empty or cut body, another service's JSON) comes from something on the way: a
        # wrong base_url, a proxy. It says nothing about the id, so it is retried (and,
        # on every call, held as API unavailable) instead of sending each message to the
        # DLQ.
        raise TransientApiError(
            f"HTTP {status} without Cloudflare's JSON envelope: not the API answering "
            "(check cloudflare.base_url)",
            status=status,
        )
    if status == 404 or codes & NOT_FOUND_CODES:
        raise NotFoundError(detail, status=status, codes=code_list)
    if status >= 400:
        raise ApiRejectedError(detail, status=status, codes=code_list)
    if status != 200:
        raise InvalidResponseError(f"HTTP {status} with an unexpected body", status=status)
    raise ApiRejectedError(detail, status=status, codes=code_list)  # success is not true


def detections_of(body: bytes) -> Detections:
    """The detections of a body that ``parse_answer`` accepted before (the cache's copy)."""
    return parse_answer(200, {}, body, default_retry_after_s=0.0)


def _detections(doc: dict[str, Any], status: int) -> Detections:
    result = doc.get("result")
    if not isinstance(result, dict):
        raise InvalidResponseError("success answer without a result object", status=status)
    try:
        return Detections.model_validate(result)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidResponseError(
            f"result.{where}: {first['msg']} ({exc.error_count()} problems)", status=status
        ) from None


_RATELIMIT = re.compile(r"\br=(\d+).*?\bt=(\d+)|\bt=(\d+).*?\br=(\d+)")


def parse_ratelimit(value: str | None) -> tuple[int, float] | None:
    """(remaining, seconds to reset) from a ``Ratelimit: "default";r=50;t=30`` header."""
    if not value:
        return None
    match = _RATELIMIT.search(value)
    if match is None:
        return None
    if match.group(1) is not None:
        return int(match.group(1)), float(match.group(2))
    return int(match.group(4)), float(match.group(3))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``retry-after`` header (delta-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _json_or_none(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _is_envelope(doc: Any) -> bool:
    """Whether a body is Cloudflare's JSON envelope (``success``, ``errors``, ...)."""
    return isinstance(doc, dict) and ("success" in doc or "errors" in doc)


def _errors(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        return [e for e in doc["errors"] if isinstance(e, dict)]
    return []


def _error_codes(doc: Any) -> frozenset[int]:
    return frozenset(e["code"] for e in _errors(doc) if isinstance(e.get("code"), int))


def _error_text(doc: Any, status: int) -> str:
    parts = [f"{e.get('code')}: {str(e.get('message'))[:200]}" for e in _errors(doc)[:3]]
    return f"HTTP {status}" + (" (" + "; ".join(parts) + ")" if parts else "")
