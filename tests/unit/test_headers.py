"""Header values from real mail: encoded words that fail to decode keep their raw text."""

from __future__ import annotations

import pytest

from worker.cloudflare.models import Detections
from worker.events import build_event
from worker.inputs import EnrichRequest


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("=?utf-8?B?w5xiZXJ3ZWlzdW5n?=", "Überweisung"),
        ("=?utf-8?B?w5xiZXJ3ZWlzdW5?=", "=?utf-8?B?w5xiZXJ3ZWlzdW5?="),  # bad base64 padding
        ("=?no-such-charset?Q?abc?=", "=?no-such-charset?Q?abc?="),
        ("=?utf-8?B?###?=", "=?utf-8?B?###?="),
        ("plain text", "plain text"),
    ],
)
def test_subject_decoding_never_fails(raw: str, expected: str) -> None:
    detections = Detections.model_validate({"headers": [{"name": "Subject", "value": raw}]})
    event = build_event(detections, EnrichRequest("x", "0" * 32), None)
    assert event["headers"]["subject"] == expected
