"""Deterministic, realistic detections payloads and investigate ids for the simulator.

Everything is derived from (seed, id) with ``random.Random`` seeded by a string, which is
stable across processes and Python runs, so a test or a benchmark sees the same answer for
the same id every time.
"""

from __future__ import annotations

import hashlib
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_EPOCH = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)
_CATALOG_ID = re.compile(r"^[0-9A-Za-z]{16}-\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-(\d{8})$")

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
_SUBJECTS = [
    "Invoice #{n} overdue",
    "Your mailbox is almost full",
    "Re: contract for Q{q}",
    "=?utf-8?B?w5xiZXJ3ZWlzdW5nIGJlc3TDpHRpZ2Vu?=",
    "=?iso-8859-1?Q?R=E9sum=E9_attached?=",
    "Shared document: Payroll {n}.xlsx",
    "Zahlungserinnerung \u2013 bitte prüfen",
    "Action required: verify your account within 24 hours",
]
_FILES = [
    ("invoice.pdf", "application/pdf"),
    ("payroll.xlsm", "application/vnd.ms-excel.sheet.macroEnabled.12"),
    ("scan.zip", "application/zip"),
    ("photo.jpg", "image/jpeg"),
    ("update.html", "text/html"),
    ("report.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
]
_FINDINGS = [
    ("Sender domain age", "header", "From"),
    ("URL reputation", "body", "link"),
    ("Attachment macro", "attachment", "content"),
    ("Display name mismatch", "header", "From"),
    ("Lookalike domain", "header", "Reply-To"),
]
_VALIDATION = ["pass", "pass", "pass", "fail", "neutral", "none", "error"]


def catalog_id(seed: int, index: int) -> str:
    """The ``index``-th investigate id the simulator knows for ``seed``."""
    rng = random.Random(f"id:{seed}:{index}")  # noqa: S311 - test data
    prefix = "".join(rng.choice(_BASE62) for _ in range(16))
    when = (_EPOCH + timedelta(seconds=37 * index)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{prefix}-{when}-{index:08d}"


def is_catalog_id(seed: int, investigate_id: str, catalog_size: int) -> bool:
    """True if the id is one of the first ``catalog_size`` ids of this seed."""
    match = _CATALOG_ID.match(investigate_id)
    if match is None:
        return False
    index = int(match.group(1))
    return index < catalog_size and catalog_id(seed, index) == investigate_id


def detections(seed: int, investigate_id: str, *, shape_2025: bool) -> dict[str, Any]:
    """The ``result`` object of the detections call for this id."""
    rng = random.Random(f"det:{seed}:{investigate_id}")  # noqa: S311 - test data
    disposition = _weighted(rng, _DISPOSITIONS)
    domain = rng.choice(_DOMAINS)
    asn, as_name = rng.choice(_ASNS)
    result: dict[str, Any] = {
        "action": rng.choice(_ACTIONS),
        "attachments": [
            _attachment(rng, shape_2025) for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3]))
        ],
        "final_disposition": disposition,
        "headers": _headers(rng, domain, investigate_id),
        "links": _links(rng, domain),
        "sender_info": {
            "as_name": as_name,
            "as_number": asn,
            "geo": rng.choice(_GEOS),
            "ip": f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(1, 254)}",
            "pld": domain,
        },
        "threat_categories": _categories(rng, disposition, shape_2025),
        "validation": _validation(rng, shape_2025),
    }
    if shape_2025:
        if rng.random() < 0.15:
            result["final_disposition"] = None
    else:
        result["findings"] = None if rng.random() < 0.1 else _findings(rng, disposition)
        if rng.random() < 0.05:
            del result["final_disposition"]
    return result


def _weighted(rng: random.Random, pairs: list[tuple[str, int]]) -> str:
    return rng.choices([v for v, _ in pairs], weights=[w for _, w in pairs])[0]


def _attachment(rng: random.Random, shape_2025: bool) -> dict[str, Any]:
    name, content_type = rng.choice(_FILES)
    size = rng.randint(200, 4_000_000)
    attachment: dict[str, Any] = {
        "content_type": content_type,
        "detection": rng.choice(["MALICIOUS", "SUSPICIOUS", "NONE", "NONE", None]),
        "encrypted": rng.random() < 0.05,
        "name": name,
        "size": size,
    }
    if shape_2025:
        return attachment
    if rng.random() < 0.1:
        return {"size": size}  # only size is required by the schema
    blob = f"{name}:{size}:{rng.random()}".encode()
    attachment.update(
        filename=name,
        md5=hashlib.md5(blob, usedforsecurity=False).hexdigest(),
        sha1=hashlib.sha1(blob, usedforsecurity=False).hexdigest(),
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    return attachment


def _headers(rng: random.Random, domain: str, investigate_id: str) -> list[dict[str, str]]:
    subject = rng.choice(_SUBJECTS).format(n=rng.randint(1000, 99999), q=rng.randint(1, 4))
    sent = _EPOCH + timedelta(minutes=rng.randint(0, 500_000))
    headers = [
        {"name": "From", "value": f"Accounts Payable <billing@{domain}>"},
        {"name": "To", "value": "j.doe@corp.example"},
        {"name": "Subject", "value": subject},
        {"name": "Date", "value": sent.strftime("%a, %d %b %Y %H:%M:%S +0000")},
        {"name": "Message-ID", "value": f"<{investigate_id[:16]}@{domain}>"},
    ]
    if rng.random() < 0.3:
        headers.append({"name": "Reply-To", "value": f"finance@{rng.choice(_DOMAINS)}"})
    if rng.random() < 0.2:
        headers.append({"name": "Cc", "value": "team@corp.example, m.roe@corp.example"})
    if rng.random() < 0.1:
        headers.append({"name": "X-Long-Trace", "value": "hop;" * 400})
    return headers


def _links(rng: random.Random, domain: str) -> list[dict[str, Any]]:
    links = []
    for _ in range(rng.choice([0, 1, 1, 2, 3, 5])):
        path = "".join(rng.choice(_BASE62) for _ in range(8))
        host = rng.choice([domain, f"login.{domain}", "docs.example.org"])
        links.append({"href": f"https://{host}/{path}", "text": rng.choice(["Click here", None])})
    return links


def _categories(rng: random.Random, disposition: str, shape_2025: bool) -> list[dict[str, Any]]:
    if disposition in ("NONE", "UNKNOWN"):
        return []
    chosen = rng.sample(_CATEGORIES, k=rng.randint(1, 3))
    categories = []
    for cat_id, name, description in chosen:
        category: dict[str, Any] = {"id": cat_id, "name": name, "description": description}
        if not shape_2025 and rng.random() < 0.1:
            del category["id"]  # optional since 2026
        categories.append(category)
    return categories


def _validation(rng: random.Random, shape_2025: bool) -> dict[str, Any]:
    def value() -> str | None:
        if shape_2025 and rng.random() < 0.2:
            return None  # older data has nulls
        return rng.choice(_VALIDATION)

    comment = rng.choice([None, None, "SPF softfail from an unlisted relay"])
    return {"comment": comment, "dkim": value(), "dmarc": value(), "spf": value()}


def _findings(rng: random.Random, disposition: str) -> list[dict[str, Any]]:
    findings = []
    for name, portion, field in rng.sample(_FINDINGS, k=rng.randint(0, 3)):
        findings.append(
            {
                "name": name,
                "detection": disposition,
                "score": round(rng.uniform(0, 100), 2),
                "field": field,
                "portion": portion,
                "reason": rng.choice([None, "matched a known campaign"]),
                "value": rng.choice([None, "example"]),
                "detail": None,
                "attachment": None,
            }
        )
    return findings
