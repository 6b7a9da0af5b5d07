"""Lenient models of the detections ``result``: both the 2025 and 2026 shapes validate.

Every field is optional and nullable, unknown keys are ignored, and enum-like fields stay
plain strings, so a value Cloudflare adds tomorrow is kept rather than rejected.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DISPOSITIONS = frozenset(
    {
        "MALICIOUS",
        "MALICIOUS-BEC",
        "SUSPICIOUS",
        "SPOOF",
        "SPAM",
        "BULK",
        "ENCRYPTED",
        "EXTERNAL",
        "UNKNOWN",
        "NONE",
    }
)
"""Documented values of final_disposition and of attachment/finding detections."""

VALIDATION_RESULTS = frozenset({"pass", "neutral", "fail", "error", "none"})


def _none_to_empty(value: Any) -> Any:
    return [] if value is None else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Attachment(_Model):
    """One attachment; only ``size`` is required by the schema."""

    size: int | None = None
    content_type: str | None = None
    detection: str | None = None
    encrypted: bool | None = None
    filename: str | None = None
    name: str | None = None
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None


class Finding(_Model):
    """One finding (2026 shape only)."""

    name: str | None = None
    detection: str | None = None
    score: float | None = None
    field: str | None = None
    value: str | None = None
    portion: str | None = None
    reason: str | None = None
    detail: str | None = None
    attachment: str | None = None


class Header(_Model):
    """A raw e-mail header."""

    name: str = ""
    value: str = ""


class Link(_Model):
    """A link found in the message."""

    href: str | None = None
    text: str | None = None


class SenderInfo(_Model):
    """Where the message came from."""

    ip: str | None = None
    as_number: int | None = None
    as_name: str | None = None
    geo: str | None = None
    pld: str | None = None


class ThreatCategory(_Model):
    """A threat category; ``id`` is optional since 2026."""

    id: int | None = None
    name: str | None = None
    description: str | None = None


class Validation(_Model):
    """SPF, DKIM and DMARC results."""

    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None
    comment: str | None = None


_List = BeforeValidator(_none_to_empty)


class Detections(_Model):
    """The ``result`` object of the detections call."""

    action: str | None = None
    final_disposition: str | None = None
    attachments: Annotated[list[Attachment], _List] = Field(default_factory=list)
    findings: list[Finding] | None = None
    headers: Annotated[list[Header], _List] = Field(default_factory=list)
    links: Annotated[list[Link], _List] = Field(default_factory=list)
    sender_info: SenderInfo | None = None
    threat_categories: Annotated[list[ThreatCategory], _List] = Field(default_factory=list)
    validation: Validation | None = None
