"""Deterministic, realistic detections payloads: the ``result`` documents and their envelope.

Everything is derived from (seed, id) with ``random.Random`` seeded by a string, which is
stable across processes and Python runs, so a test or a benchmark sees the same answer for
the same id every time. Payloads follow the published schema of their shape (2026 or 2025)
and use every freedom it leaves: nullable fields are sometimes null, optional ones
sometimes absent, objects sometimes carry keys the schema does not list, and headers carry
what real mail carries (RFC 2047 words, raw non-ASCII, folding, very long values).
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from typing import Any

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
EPOCH = 1767607200  # 2026-01-05T10:00:00Z
_ABSENT = object()

_DISPOSITIONS = [
    ("NONE", 30),
    ("SPAM", 18),
    ("BULK", 14),
    ("SUSPICIOUS", 12),
    ("MALICIOUS", 10),
    ("SPOOF", 5),
    ("MALICIOUS-BEC", 3),
    ("EXTERNAL", 4),
    ("ENCRYPTED", 2),
    ("UNKNOWN", 2),
]
_DISPOSITION_VALUES = [d for d, _ in _DISPOSITIONS]
_DISPOSITION_CUM = [sum(w for _, w in _DISPOSITIONS[: i + 1]) for i in range(len(_DISPOSITIONS))]
_ACTIONS = ["QUARANTINED", "DELIVERED", "MOVED_TO_SPAM", "BLOCKED", "TAGGED", "RELEASED"]
_CATEGORIES = [
    (1234, "IP Reputation", "Sender IP has a poor reputation"),
    (2001, "Credential Harvester", "Link leads to a credential harvesting page"),
    (2002, "Malicious Link", None),
    (2003, "BEC", "Business e-mail compromise pattern"),
    (2004, "Spoofed Sender", None),
    (2005, "Suspicious Attachment", "Attachment type commonly used for malware"),
    (2006, "New Domain Sender", "Sender domain registered in the last 30 days"),
    (2007, "Display Name Impersonation", None),
]
_ASNS = [
    (13335, "CLOUDFLARENET"),
    (15169, "GOOGLE"),
    (16509, "AMAZON-02"),
    (8075, "MICROSOFT-CORP-MSN-AS-BLOCK"),
    (14061, "DIGITALOCEAN-ASN"),
    (24940, "HETZNER-AS"),
    (4134, "CHINANET-BACKBONE"),
]
_GEOS = ["US/CA/San Francisco", "US/-/-", "DE/BY/Munich", "NL/-/-", "CN/-/-", "BR/SP/Sao Paulo"]
_DOMAINS = [
    "example.com",
    "example.net",
    "mail.example.org",
    "invoices-example.net",
    "secure-login.example",
    "example.co.uk",
]


def _b_word(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def _q_word(text: str, charset: str = "utf-8") -> str:
    raw = text.encode(charset)
    body = "".join(
        "_" if b == 0x20 else chr(b) if 0x21 <= b < 0x7F and b not in b"=?_" else f"={b:02X}"
        for b in raw
    )
    return f"=?{charset}?Q?{body}?="


_SUBJECTS = [
    "Invoice #{n} overdue",
    "Your mailbox is almost full",
    "Re: contract for Q{q}",
    _b_word("Überweisung bestätigen"),
    _q_word("Résumé attached", "iso-8859-1"),
    "Shared document: Payroll {n}.xlsx",
    "Zahlungserinnerung \u2013 bitte prüfen",
    "Action required: verify your account within 24 hours",
    _b_word("\U0001f4e6 Your parcel is waiting for you"),
    "請求書のご確認をお願いします",
    "Счёт на оплату №{n}",
    "فاتورة رقم {n}",
    "RÃ©sumÃ© & Lebenslauf",  # UTF-8 read as Latin-1 somewhere on the way
    _q_word("Rechnung für März", "windows-1252") + " " + _q_word("(Mahnung)", "windows-1252"),
    _b_word("Re: Angebot ") + "\r\n " + _b_word("Nr. 4711 \u2013 dringend"),  # folded, two words
    "=?utf-8?B?not*valid*base64?=",  # a broken encoded word, as spam sends
    "=?x-unknown-charset?Q?Hello_there?=",
    "",
]
_FROM = [
    "Accounts Payable <billing@{d}>",
    '"Doe, Jane" <jane.doe@{d}>',
    _q_word("Jürgen Müller") + " <j.mueller@{d}>",
    _b_word("张三") + " <zhang@{d}>",
    '"IT Support \U0001f512" <support@{d}>',
    "billing@{d}",
    "Microsoft 365 <no-reply@{d}>",
]
_FILES = [
    ("invoice.pdf", "application/pdf"),
    ("payroll.xlsm", "application/vnd.ms-excel.sheet.macroEnabled.12"),
    ("scan.zip", "application/zip"),
    ("photo.jpg", "image/jpeg"),
    ("update.html", "text/html"),
    ("report.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("Rechnung März.pdf", "application/pdf"),
    ("=?utf-8?Q?pr=C3=A9sentation.pptx?=", "application/octet-stream"),
]
_FINDINGS = [
    ("Sender domain age", "header", "From"),
    ("URL reputation", "body", "link"),
    ("Attachment macro", "attachment", "content"),
    ("Display name mismatch", "header", "From"),
    ("Lookalike domain", "header", "Reply-To"),
]
_VALIDATION = ["pass", "pass", "pass", "fail", "neutral", "none", "error"]
# Keys the schema does not list, per object, as a newer API version could add them.
_EXTRA: dict[str, list[tuple[str, Any]]] = {
    "result": [
        ("scan_version", "2026.4.2"),
        ("risk_score", 87),
        ("verdict_reasons", ["sender reputation", "link reputation"]),
        ("delivery", {"mode": "DIRECT", "queued_ms": 12, "hops": [{"ip": "192.0.2.7"}]}),
        ("postfix_id_outbound", None),
    ],
    "attachment": [
        ("page_count", 3),
        ("sniffed_type", "application/x-msdownload"),
        ("archive_members", [{"name": "a.exe", "size": 1024}]),
        ("password_hint", None),
    ],
    "finding": [("rule_id", "R-2231"), ("confidence", 0.93), ("tags", ["campaign"])],
    "sender_info": [("country_code", "US"), ("asn_org_type", "hosting"), ("rdns", None)],
    "category": [("severity", "high"), ("group", None)],
    "link": [("domain_age_days", 3), ("redirects", ["https://t.example.net/r"])],
    "validation": [("arc", "pass"), ("bimi", None)],
    "header": [("position", 0)],
}
_NOTICES = [
    {"code": 10200, "message": "postfix_id is deprecated, use investigate_id", "type": None},
    {"code": 10300, "message": "Results may be incomplete while indexing catches up", "type": None},
]


# --- detections ---------------------------------------------------------------------------------


def _pick(rng: random.Random, options: Any) -> Any:
    """``rng.choice`` at a third of the cost (this runs for every cold request)."""
    return options[int(rng.random() * len(options))]


def _between(rng: random.Random, low: int, high: int) -> int:
    """``rng.randint(low, high)``, cheaper."""
    return low + int(rng.random() * (high - low + 1))


class _Draw:
    """The random choices of one payload: nulls, absences and extra keys at set rates."""

    __slots__ = ("extra", "null", "rng")

    def __init__(self, rng: random.Random, null_ratio: float, extra: bool) -> None:
        self.rng = rng
        self.null = null_ratio
        self.extra = extra

    def nullable(self, value: Any) -> Any:
        """``value``, or None (null_ratio), or absent (half that)."""
        draw = self.rng.random()
        if draw < self.null:
            return None
        if draw < self.null * 1.5:
            return _ABSENT
        return value

    def optional(self, value: Any) -> Any:
        """``value``, or absent (null_ratio): for optional fields that may not be null."""
        return _ABSENT if self.rng.random() < self.null else value

    def add_extra(self, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        if self.extra and self.rng.random() < 0.5:
            key, value = _pick(self.rng, _EXTRA[kind])
            obj[key] = value
        return obj


def _pack(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not _ABSENT}


def detections_body(
    seed: int,
    investigate_id: str,
    *,
    shape_2025: bool,
    null_ratio: float = 0.08,
    extra_keys_ratio: float = 0.25,
    variant: int | None = None,
) -> dict[str, Any]:
    """The whole 200 body (Cloudflare's envelope) of the detections call for this id.

    The content is drawn from (seed, id), or from (seed, shape, ``variant``) when given;
    the id itself appears in the Message-ID and Received headers either way.
    """
    key = investigate_id if variant is None else f"variant:{int(shape_2025)}:{variant}"
    rng = random.Random(f"det:{seed}:{key}")  # noqa: S311 - test data
    extra = rng.random() < extra_keys_ratio
    result = _detections(_Draw(rng, null_ratio, extra), investigate_id, shape_2025)
    messages = [_pick(rng, _NOTICES)] if extra and rng.random() < 0.5 else []
    return {"result": result, "success": True, "errors": [], "messages": messages}


def detections(seed: int, investigate_id: str, *, shape_2025: bool) -> dict[str, Any]:
    """The ``result`` object of the detections call for this id (default rates)."""
    result: dict[str, Any] = detections_body(seed, investigate_id, shape_2025=shape_2025)["result"]
    return result


def _detections(d: _Draw, investigate_id: str, shape_2025: bool) -> dict[str, Any]:
    rng = d.rng
    disposition = rng.choices(_DISPOSITION_VALUES, cum_weights=_DISPOSITION_CUM)[0]
    domain = _pick(rng, _DOMAINS)
    asn, as_name = _pick(rng, _ASNS)
    octet = _between(rng, 1, 254)
    result: dict[str, Any] = {
        "action": _pick(rng, _ACTIONS),
        "attachments": [
            _attachment(d, shape_2025) for _ in range(_pick(rng, [0, 0, 0, 1, 1, 2, 3]))
        ],
        "final_disposition": disposition,
        "headers": _headers(d, domain, investigate_id),
        "links": _links(d, domain),
        "sender_info": d.add_extra(
            _pack(
                as_name=d.nullable(as_name),
                as_number=d.nullable(asn),
                geo=d.nullable(_pick(rng, _GEOS)),
                ip=d.nullable(f"{_pick(rng, ['192.0.2', '198.51.100', '203.0.113'])}.{octet}"),
                pld=d.nullable(domain),
            ),
            "sender_info",
        ),
        "threat_categories": _categories(d, disposition, shape_2025),
        "validation": _validation(d, shape_2025),
    }
    if shape_2025:
        if rng.random() < d.null * 2:
            result["final_disposition"] = None  # nullable in 2025
    else:
        result["findings"] = None if rng.random() < d.null else _findings(d, disposition)
        if rng.random() < d.null:
            del result["final_disposition"]  # optional since 2026
    return d.add_extra(result, "result")


def _attachment(d: _Draw, shape_2025: bool) -> dict[str, Any]:
    rng = d.rng
    name, content_type = _pick(rng, _FILES)
    size = _between(rng, 0, 4_000_000)
    if not shape_2025 and rng.random() < 0.1:
        return d.add_extra({"size": size}, "attachment")  # only size is required
    attachment = _pack(
        content_type=d.nullable(content_type),
        detection=d.nullable(_pick(rng, ["MALICIOUS", "SUSPICIOUS", "NONE", "NONE", "BULK"])),
        encrypted=d.nullable(rng.random() < 0.05),
        name=d.nullable(name),
        size=size,
    )
    if not shape_2025:
        blob = f"{name}:{size}:{rng.random()}".encode()
        attachment.update(
            _pack(
                filename=d.nullable(name),
                md5=d.nullable(hashlib.md5(blob, usedforsecurity=False).hexdigest()),
                sha1=d.nullable(hashlib.sha1(blob, usedforsecurity=False).hexdigest()),
                sha256=d.nullable(hashlib.sha256(blob).hexdigest()),
            )
        )
    return d.add_extra(attachment, "attachment")


def _headers(d: _Draw, domain: str, investigate_id: str) -> list[dict[str, Any]]:
    rng = d.rng
    subject = _pick(rng, _SUBJECTS).format(n=_between(rng, 1000, 99999), q=_between(rng, 1, 4))
    sent = time.strftime(
        "%a, %d %b %Y %H:%M:%S +0000", time.gmtime(EPOCH + _between(rng, 0, 30_000_000))
    )
    local = investigate_id[:16]
    headers: list[dict[str, Any]] = [
        {
            "name": "Received",
            "value": f"from mail.{domain} (mail.{domain} [203.0.113.{_between(rng, 1, 254)}])\r\n\t"
            f"by mx.corp.example with ESMTPS id {local}; " + sent,
        },
        {"name": "From", "value": _pick(rng, _FROM).format(d=domain)},
        {"name": "To", "value": "j.doe@corp.example"},
        {"name": "Subject", "value": subject},
        {"name": "Date", "value": sent},
        {"name": "Message-ID", "value": f"<{local}@{domain}>"},
    ]
    if rng.random() < 0.3:
        headers.append({"name": "Reply-To", "value": f"finance@{_pick(rng, _DOMAINS)}"})
    if rng.random() < 0.2:
        headers.append({"name": "Cc", "value": "team@corp.example, m.roe@corp.example"})
    if rng.random() < 0.3:
        signature = base64.b64encode(rng.randbytes(256)).decode()
        headers.append(
            {
                "name": "DKIM-Signature",
                "value": f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=sel1; "
                f"h=from:to:subject:date:message-id; bh={signature[:44]};\r\n\tb={signature}",
            }
        )
    if rng.random() < 0.1:
        headers.append({"name": "X-Long-Trace", "value": "hop;" * 400})
    if rng.random() < 0.02:
        refs = " ".join(f"<{i}.{local}@{domain}>" for i in range(300))
        headers.append({"name": "References", "value": refs})  # ~12 kB
    if rng.random() < 0.05:
        headers.append({"name": "X-Empty", "value": ""})
    if rng.random() < 0.05:
        headers.append({"name": "X-Mailer", "value": "Microsoft Outlook 16.0\x00\x7f"})
    if d.extra:
        d.add_extra(headers[0], "header")
    return headers


def _links(d: _Draw, domain: str) -> list[dict[str, Any]]:
    rng = d.rng
    links = []
    for _ in range(_pick(rng, [0, 1, 1, 2, 3, 5])):
        path = "".join(rng.choices(BASE62, k=8))
        host = _pick(rng, [domain, f"login.{domain}", "docs.example.org", "xn--bcher-kva.example"])
        query = _pick(rng, ["", "?u=j.doe%40corp.example&t=1", "?" + "x" * 1500])
        text = _pick(rng, ["Click here", None, "Jetzt prüfen", "", f"https://{host}/{path}"])
        links.append(
            d.add_extra(_pack(href=f"https://{host}/{path}{query}", text=d.optional(text)), "link")
        )
    return links


def _categories(d: _Draw, disposition: str, shape_2025: bool) -> list[dict[str, Any]]:
    if disposition in ("NONE", "UNKNOWN"):
        return []
    rng = d.rng
    categories = []
    for cat_id, name, description in rng.sample(_CATEGORIES, k=_between(rng, 1, 3)):
        category = _pack(
            id=cat_id if shape_2025 else d.optional(cat_id),  # optional since 2026
            name=d.nullable(name),
            description=description if description is None else d.nullable(description),
        )
        categories.append(d.add_extra(category, "category"))
    return categories


def _validation(d: _Draw, shape_2025: bool) -> dict[str, Any]:
    rng = d.rng

    def value() -> Any:
        if shape_2025:
            return None if rng.random() < 0.2 else _pick(rng, _VALIDATION)  # older data: nulls
        return d.optional(_pick(rng, _VALIDATION))  # 2026: optional, never null

    comment = _pick(rng, [None, None, "SPF softfail from an unlisted relay", _ABSENT])
    return d.add_extra(
        _pack(comment=comment, dkim=value(), dmarc=value(), spf=value()), "validation"
    )


def _findings(d: _Draw, disposition: str) -> list[dict[str, Any]]:
    rng = d.rng
    findings = []
    for name, portion, field in rng.sample(_FINDINGS, k=_between(rng, 0, 3)):
        finding = _pack(
            name=d.nullable(name),
            detection=d.optional(disposition),
            score=d.nullable(round(rng.uniform(0, 100), 2)),
            field=d.nullable(field),
            portion=d.nullable(portion),
            reason=d.nullable(_pick(rng, ["matched a known campaign", "first seen sender"])),
            value=d.nullable(_pick(rng, ["example", "ACME Payroll <pay@example.net>"])),
            detail=d.nullable(None if rng.random() < 0.5 else "score above threshold"),
            attachment=d.nullable(None if portion != "attachment" else "payroll.xlsm"),
        )
        findings.append(d.add_extra(finding, "finding"))
    return findings
