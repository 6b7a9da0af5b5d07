"""The published schema of the detections call, and the official SDK's reading of an answer.

Shared by the simulator tests and the parsing proof (tests/unit/test_proof_*.py):

* ``openapi_to_jsonschema`` turns the OpenAPI 3.0 fragments of
  ``data/openapi-email-security.json`` into plain JSON Schema (draft 7), and
  ``SCHEMA_2026`` / ``SCHEMA_2025`` / ``SCHEMA_4XX`` are validators of the 200 body of each
  shape and of the error body.
* ``sdk_parse`` / ``sdk_parse_strict`` read a 200 body the way the official SDK
  (``cloudflare``, pinned in pyproject.toml) does, into its ``DetectionGetResponse``.
* ``expected_content`` computes, from that SDK object and without any worker code, what the
  content fields of our enrichment event must be (docs/event-schema.md).
"""

from __future__ import annotations

import base64
import difflib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import orjson
from cloudflare import Cloudflare
from cloudflare._wrappers import ResultWrapper
from cloudflare.types.email_security.investigate.detection_get_response import (
    DetectionGetResponse,
)

DATA = Path(__file__).parent / "data"
SPEC: dict[str, Any] = json.loads((DATA / "openapi-email-security.json").read_text())
PATH_2025 = "/accounts/{account_id}/email-security/investigate/{postfix_id}/detections"

# --- OpenAPI 3.0 -> JSON Schema -------------------------------------------------------------


def openapi_to_jsonschema(node: Any, components: dict[str, Any] | None = None) -> Any:
    """Inline local $refs and turn OpenAPI ``nullable: true`` into a JSON Schema null union.

    ``nullable`` on a member of an ``allOf`` (the 2025 spec writes nullable enums as
    ``allOf: [{$ref: enum}, {nullable: true, type: string}]``) makes the whole ``allOf``
    accept null, which is what the spec's authors meant.
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        assert components is not None, f"unresolvable {node['$ref']}"
        prefix = "#/components/schemas/"
        assert node["$ref"].startswith(prefix), node["$ref"]
        return openapi_to_jsonschema(components[node["$ref"][len(prefix) :]], components)
    schema = {
        key: openapi_to_jsonschema(value, components)
        for key, value in node.items()
        if key not in ("nullable", "example", "x-auditable")
    }
    if "allOf" in node and any(m.get("nullable") for m in node["allOf"] if isinstance(m, dict)):
        return {"anyOf": [{"type": "null"}, schema]}
    if node.get("nullable"):
        if "type" in schema:
            schema["type"] = [schema["type"], "null"]
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
    return schema


def validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


_P2025 = SPEC["previous_2025"]
BODY_2026: dict[str, Any] = openapi_to_jsonschema(
    SPEC["current_2026"]["resolved"]["detections_200_body"]
)
BODY_4XX: dict[str, Any] = openapi_to_jsonschema(
    SPEC["current_2026"]["resolved"]["detections_4XX_body"]
)
BODY_2025: dict[str, Any] = openapi_to_jsonschema(
    _P2025["paths"][PATH_2025]["get"]["responses"]["200"]["content"]["application/json"]["schema"],
    _P2025["components"]["schemas"],
)
SCHEMA_2026 = validator(BODY_2026)
SCHEMA_2025 = validator(BODY_2025)
SCHEMA_4XX = validator(BODY_4XX)


# --- the official SDK ------------------------------------------------------------------------
#
# How the SDK (cloudflare 5.9.0) reads this answer, from its source:
# ``client.email_security.investigate.detections.get(...)`` requests with
# ``cast_to=ResultWrapper[DetectionGetResponse]`` and ``post_parser=ResultWrapper._unwrapper``.
# ``APIResponse._parse`` decodes the body with ``response.json()`` (the stdlib json module)
# and hands it to ``BaseClient._process_response_data``, which calls
# ``construct_type(type_=cast_to, value=data)`` (the default,
# ``_strict_response_validation=False``: loose coercion, nothing is rejected) or
# ``validate_type(...)`` (``_strict_response_validation=True``: pydantic validation against
# the SDK's types; a failure becomes ``APIResponseValidationError``). The post-parser then
# returns ``.result``. The helpers below call that same method of real clients, minus the
# HTTP round trip; test_proof_simulator checks that they return what ``.get()`` returns.

SDK_CAST_TO: Any = ResultWrapper[DetectionGetResponse]
ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
_UNUSED_URL = "http://sdk-parse.invalid/client/v4"


def sdk_client(*, strict: bool = False, transport: httpx.BaseTransport | None = None) -> Cloudflare:
    """A real SDK client; with ``transport`` its requests go there (no network)."""
    http = httpx.Client(transport=transport or httpx.MockTransport(_no_network))
    return Cloudflare(
        api_token="sdk-proof-token",  # never sent anywhere
        base_url=_UNUSED_URL,
        max_retries=0,
        http_client=http,
        _strict_response_validation=strict,
    )


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected SDK request {request.url}")


_LOOSE = sdk_client()
_STRICT = sdk_client(strict=True)
_DUMMY_RESPONSE = httpx.Response(200, request=httpx.Request("GET", _UNUSED_URL))


def sdk_parse(body: bytes, *, strict: bool = False) -> DetectionGetResponse:
    """The SDK's ``DetectionGetResponse`` for a 200 body, as ``detections.get()`` builds it.

    ``strict=True`` is the SDK's validating mode; it raises
    ``cloudflare.APIResponseValidationError`` where the payload does not fit its types.
    """
    client = _STRICT if strict else _LOOSE
    wrapper = client._process_response_data(
        data=json.loads(body), cast_to=SDK_CAST_TO, response=_DUMMY_RESPONSE
    )
    result = ResultWrapper._unwrapper(wrapper)
    assert isinstance(result, DetectionGetResponse), type(result)
    return result


def sdk_parse_strict(body: bytes) -> DetectionGetResponse:
    return sdk_parse(body, strict=True)


# --- the event content the SDK's reading implies ---------------------------------------------
#
# Written from docs/event-schema.md, not from worker/events.py: each rule below is the
# documented one, applied to the SDK's objects.

FINDING_KEYS = (
    "name",
    "detection",
    "score",
    "field",
    "value",
    "portion",
    "reason",
    "detail",
    "attachment",
)
HEADER_KEYS = {
    "from": "from",
    "to": "to",
    "cc": "cc",
    "reply_to": "reply-to",
    "subject": "subject",
    "message_id": "message-id",
    "date": "date",
}
ENVELOPE_KEYS = frozenset(
    {
        "event_id",
        "schema_version",
        "investigate_id",
        "account_id",
        "enriched_at",
        "source",
        "context",
    }
)

# RFC 2047 header values whose decoding was checked by hand, byte by byte; the values that
# fail to decode stay raw, as documented.
ENCODED_WORDS = {
    # base64 of the UTF-8 bytes of "Überweisung bestätigen"
    "=?utf-8?B?w5xiZXJ3ZWlzdW5nIGJlc3TDpHRpZ2Vu?=": "Überweisung bestätigen",
    # quoted-printable latin-1: E9 is é, _ is a space
    "=?iso-8859-1?Q?R=E9sum=E9_attached?=": "Résumé attached",
    # plain text around an encoded word keeps its spaces
    "Re: =?utf-8?Q?caf=C3=A9?= menu": "Re: café menu",
    # upper-case charset, lower-case q; C3 BC is ü, C3 9F is ß
    "=?UTF-8?q?Gr=C3=BC=C3=9Fe?=": "Grüße",
    # F0 9F 94 92 is U+1F512; the space between two encoded words is dropped, the one
    # inside the second word (base64 of " locked") is kept
    "=?utf-8?B?8J+Ukg==?= =?utf-8?B?IGxvY2tlZA==?=": "\U0001f512 locked",
    # FF FF FF is not UTF-8: kept raw
    "=?utf-8?B?////?=": "=?utf-8?B?////?=",
    # base64 cut short (15 characters, no padding) or with characters outside base64: raw
    "=?utf-8?B?w5xiZXJ3ZWlzdW5?=": "=?utf-8?B?w5xiZXJ3ZWlzdW5?=",
    "=?utf-8?B?not*valid*base64?=": "=?utf-8?B?not*valid*base64?=",
    # an unknown charset: kept raw
    "=?x-unknown?Q?abc?=": "=?x-unknown?Q?abc?=",
    # an encoded word that decodes to nothing: kept raw
    "=?utf-8?B??=": "=?utf-8?B??=",
    # "=?" without an encoded word
    "Plain =? not encoded": "Plain =? not encoded",
}
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_QP_BYTE = re.compile(rb"=([0-9A-Fa-f]{2})")


def rfc2047(raw: str) -> str:
    """A strict RFC 2047 decoder of our own, as docs/event-schema.md states the rule.

    Encoded words are decoded (B: padded base64, Q: ``_`` is a space and ``=XX`` a byte), the
    whitespace between two adjacent encoded words is dropped, other text is kept as it is.
    Anything that does not decode (bad base64, an unknown charset, bytes the charset
    refuses) or decodes to nothing keeps the whole value raw.
    """
    pieces: list[str] = []
    end = 0
    for match in _ENCODED_WORD.finditer(raw):
        gap = raw[end : match.start()]
        if not (end and gap.isspace()):  # whitespace between two words is dropped
            pieces.append(gap)
        charset, encoding, text = match.groups()
        try:
            if encoding in "bB":
                data = base64.b64decode(text, validate=True)  # padding included
            else:
                data = _QP_BYTE.sub(
                    lambda m: bytes([int(m.group(1), 16)]), text.replace("_", " ").encode()
                )
            pieces.append(data.decode(charset))
        except (ValueError, LookupError):  # binascii.Error and UnicodeError are ValueErrors
            return raw
        end = match.end()
    pieces.append(raw[end:])
    return "".join(pieces) or raw


def expected_header(raw: str | None) -> str | None:
    """The documented value of a selected header: RFC 2047 decoded, else raw."""
    if raw is None:
        return None
    if raw in ENCODED_WORDS:
        return ENCODED_WORDS[raw]
    return rfc2047(raw)


def expected_domains(hrefs: list[str]) -> list[str]:
    """Distinct lower-cased host names (no trailing dot) in first-seen order."""
    domains: list[str] = []
    for href in hrefs:
        try:
            host = urlsplit(href.strip()).hostname
        except ValueError:  # e.g. an unclosed IPv6 bracket: not a link target
            continue
        host = (host or "").lower().rstrip(".")
        if host and host not in domains:
            domains.append(host)
    return domains


def expected_content(r: DetectionGetResponse) -> dict[str, Any]:
    """The event's content fields (everything but ENVELOPE_KEYS) for the SDK's parse."""
    sender, validation = r.sender_info, r.validation
    findings = r.findings or []
    scores = [f.score for f in findings if f.score is not None]
    hrefs = [link.href for link in r.links if link.href]
    headers: dict[str, str | None] = {}
    for key, name in HEADER_KEYS.items():
        first = next((h for h in r.headers if h.name.strip().lower() == name), None)
        headers[key] = expected_header(None if first is None else first.value)
    atts = r.attachments
    return {
        "final_disposition": r.final_disposition,
        "action": r.action,
        "threat_categories": [c.name for c in r.threat_categories if c.name is not None],
        "sender": {
            "ip": sender.ip,
            "as_number": sender.as_number,
            "as_name": sender.as_name,
            "geo": sender.geo,
            "pld": sender.pld,
        },
        "validation": {
            "spf": validation.spf,
            "dkim": validation.dkim,
            "dmarc": validation.dmarc,
            "comment": validation.comment,
        },
        "attachments": {
            "count": len(atts),
            # an empty filename counts as none
            "names": [a.filename if a.filename else a.name for a in atts],
            "content_types": [a.content_type for a in atts],
            "sizes": [a.size for a in atts],
            "md5": [a.md5 for a in atts],
            "sha1": [a.sha1 for a in atts],
            "sha256": [a.sha256 for a in atts],
            "detections": [a.detection for a in atts],
            "encrypted": [a.encrypted for a in atts],
        },
        "links": {"count": len(r.links), "hrefs": hrefs, "domains": expected_domains(hrefs)},
        "findings": {
            "count": len(findings),
            "max_score": max(scores) if scores else None,
            "items": [{key: getattr(f, key) for key in FINDING_KEYS} for f in findings],
        },
        "headers": headers,
    }


def content_of(event: dict[str, Any]) -> dict[str, Any]:
    """An event without its envelope (ids, time, source, context)."""
    return {key: value for key, value in event.items() if key not in ENVELOPE_KEYS}


def canonical(value: Any) -> bytes:
    """JSON with sorted keys: unlike ``==``, it tells ``1`` from ``1.0`` and ``true``."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def assert_same_json(actual: Any, expected: Any) -> None:
    """Equal as JSON documents, types included; a failure shows a line diff."""
    mine, theirs = canonical(actual), canonical(expected)
    if mine != theirs:
        diff = difflib.unified_diff(
            json.dumps(json.loads(theirs), indent=1, ensure_ascii=False).splitlines(),
            json.dumps(json.loads(mine), indent=1, ensure_ascii=False).splitlines(),
            "expected",
            "actual",
            lineterm="",
        )
        raise AssertionError("JSON differs:\n" + "\n".join(diff))
