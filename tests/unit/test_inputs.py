"""worker.inputs: turning untrusted Kafka message bytes into an EnrichRequest.

Covers the accepted forms (bare id, JSON string, JSON object with account_id and context),
whitespace trimming, and every InputError reason code: tombstone, oversized, undecodable,
empty, malformed_json, wrong_type, missing_id, invalid_id, invalid_account_id and
missing_account_id.
"""

from __future__ import annotations

import orjson
import pytest

from worker.errors import InputError
from worker.inputs import (
    MAX_ID_LENGTH,
    EnrichRequest,
    parse_message,
    validate_account_id,
    validate_investigate_id,
)

DEFAULT_ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
OTHER_ACCOUNT = "0123456789abcdef0123456789abcdef"
REAL_IDS = [
    "4Njp3P0STMz2c02Q-2024-01-05T10:00:00-12345678",
    "47JJcT1w6GztQV7-email@example.com",
]
MAX_BYTES = 4096


def parse(value: bytes | None, default: str | None = DEFAULT_ACCOUNT) -> EnrichRequest:
    return parse_message(value, default_account_id=default, max_bytes=MAX_BYTES)


def reason_of(value: bytes | None, default: str | None = DEFAULT_ACCOUNT) -> str:
    with pytest.raises(InputError) as caught:
        parse(value, default)
    assert str(caught.value).startswith(caught.value.reason + ": ")
    return caught.value.reason


# --- accepted forms ----------------------------------------------------------------------


@pytest.mark.parametrize("investigate_id", REAL_IDS)
def test_bare_id_uses_default_account(investigate_id: str) -> None:
    request = parse(investigate_id.encode())
    assert request == EnrichRequest(investigate_id, DEFAULT_ACCOUNT, None)


@pytest.mark.parametrize("investigate_id", REAL_IDS)
def test_json_string_form(investigate_id: str) -> None:
    request = parse(orjson.dumps(investigate_id))
    assert request == EnrichRequest(investigate_id, DEFAULT_ACCOUNT, None)


def test_json_object_with_account_and_nested_context_echoed_untouched() -> None:
    context = {
        "ticket": "SOC-1",
        "nested": {"list": [1, 2.5, None, True, {"deep": "ü €"}], "empty": {}},
        "n": -3,
    }
    message = orjson.dumps(
        {"investigate_id": REAL_IDS[1], "account_id": OTHER_ACCOUNT, "context": context}
    )
    request = parse(message, default=None)
    assert request.investigate_id == REAL_IDS[1]
    assert request.account_id == OTHER_ACCOUNT
    assert request.context == context
    assert orjson.dumps(request.context) == orjson.dumps(context)  # same types and order


@pytest.mark.parametrize("context", ["a string", 7, [1, "two"], None])
def test_context_of_any_json_type_is_kept(context: object) -> None:
    message = orjson.dumps({"investigate_id": "abc", "context": context})
    assert parse(message).context == context


def test_json_account_id_overrides_default() -> None:
    message = orjson.dumps({"investigate_id": "abc", "account_id": OTHER_ACCOUNT})
    assert parse(message).account_id == OTHER_ACCOUNT


def test_json_null_account_id_falls_back_to_default() -> None:
    message = orjson.dumps({"investigate_id": "abc", "account_id": None})
    assert parse(message).account_id == DEFAULT_ACCOUNT


def test_unknown_keys_in_json_object_are_ignored() -> None:
    message = orjson.dumps({"investigate_id": "abc", "extra": {"x": 1}})
    assert parse(message) == EnrichRequest("abc", DEFAULT_ACCOUNT, None)


@pytest.mark.parametrize(
    "raw",
    [
        b"  abc  ",
        b"\n\tabc\r\n",
        b' \n {"investigate_id": "abc"} \n',
        b'\t"abc"\n',
    ],
)
def test_surrounding_whitespace_is_trimmed(raw: bytes) -> None:
    assert parse(raw).investigate_id == "abc"


def test_message_of_exactly_max_bytes_is_accepted() -> None:
    investigate_id = "a" * MAX_ID_LENGTH
    raw = investigate_id.encode().ljust(MAX_BYTES, b" ")
    assert len(raw) == MAX_BYTES
    assert parse(raw).investigate_id == investigate_id


# --- reason codes ------------------------------------------------------------------------


def test_tombstone() -> None:
    assert reason_of(None) == "tombstone"


def test_oversized_is_checked_before_decoding_and_does_not_echo_the_body() -> None:
    raw = b"\xff" + b"a" * MAX_BYTES  # one byte too many, and not UTF-8 either
    with pytest.raises(InputError) as caught:
        parse(raw)
    assert caught.value.reason == "oversized"
    assert "aaaa" not in caught.value.detail


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"abc\x80def", b'{"investigate_id": "\xc3"}'])
def test_undecodable(raw: bytes) -> None:
    assert reason_of(raw) == "undecodable"


@pytest.mark.parametrize("raw", [b"", b" ", b"\n\r\t  \n"])
def test_empty(raw: bytes) -> None:
    assert reason_of(raw) == "empty"


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"investigate_id": }', b'["abc"', b'"unterminated', b"{'investigate_id': 'a'}"],
)
def test_malformed_json(raw: bytes) -> None:
    assert reason_of(raw) == "malformed_json"


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'["abc"]',
        b"[1, 2]",
        b'{"investigate_id": 42}',
        b'{"investigate_id": 4.2}',
        b'{"investigate_id": null}',
        b'{"investigate_id": true}',
        b'{"investigate_id": ["abc"]}',
        b'{"investigate_id": {"id": "abc"}}',
        b"null",
        b" true\n",
        b"false",
    ],
)
def test_wrong_type(raw: bytes) -> None:
    assert reason_of(raw) == "wrong_type"


@pytest.mark.parametrize(
    "raw", [b"{}", b'{"id": "abc"}', b'{"investigateId": "abc"}', b'{"context": {}}']
)
def test_missing_id(raw: bytes) -> None:
    assert reason_of(raw) == "missing_id"


INVALID_IDS = [
    "",
    "/",
    "a/b",
    "../admin",
    "\\",
    "a\\b",
    "?",
    "a?b=c",
    "#",
    "a#frag",
    " ",
    "a b",
    "\t",
    "a\tb",
    "\n",
    "a\nb",
    "\nabc",
    "abc\r",
    "\x00",
    "a\x00b",
    "a\x1bb",
    "a\x7fb",
    ".",
    "..",
    "%2e%2e",
    "%2F",
    "a%2Fb",
    "é",
    "a\u2215b",  # division slash
    "a\uff0fb",  # fullwidth solidus
    "a" * (MAX_ID_LENGTH + 1),
]


@pytest.mark.parametrize("value", INVALID_IDS)
def test_validate_investigate_id_rejects(value: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_investigate_id(value)
    assert caught.value.reason == "invalid_id"


@pytest.mark.parametrize("value", [v for v in INVALID_IDS if v.strip()])
def test_invalid_id_in_json_object(value: str) -> None:
    assert reason_of(orjson.dumps({"investigate_id": value})) == "invalid_id"


@pytest.mark.parametrize("value", [v for v in INVALID_IDS if v.strip() == v and v])
def test_invalid_bare_id(value: str) -> None:
    assert reason_of(value.encode()) == "invalid_id"


def test_validate_investigate_id_rejects_trailing_newline() -> None:
    with pytest.raises(InputError):
        validate_investigate_id("abc\n")


def test_trailing_newline_inside_json_id_is_invalid() -> None:
    assert reason_of(b'{"investigate_id": "abc\\n"}') == "invalid_id"


def test_invalid_id_detail_is_a_short_preview() -> None:
    with pytest.raises(InputError) as caught:
        validate_investigate_id("/" + "x" * 200)
    assert "x" * 65 not in caught.value.detail
    assert len(caught.value.detail) < 150


@pytest.mark.parametrize(
    "value",
    [*REAL_IDS, "a" * MAX_ID_LENGTH, "...", ".a", "a.b", "A-z_0:9@x+y=z", "1234"],
)
def test_validate_investigate_id_accepts(value: str) -> None:
    assert validate_investigate_id(value) == value


@pytest.mark.parametrize("value", [42, None, b"abc", ["abc"]])
def test_validate_investigate_id_non_string_is_wrong_type(value: object) -> None:
    with pytest.raises(InputError) as caught:
        validate_investigate_id(value)
    assert caught.value.reason == "wrong_type"


INVALID_ACCOUNTS = [
    "",
    "0" * 31,
    "0" * 33,
    "023E105F4ECEF8AD9CA31A8372D0C353",
    "g" * 32,
    " 023e105f4ecef8ad9ca31a8372d0c353",
    "023e105f-4ece-f8ad-9ca3-1a8372d0c353",
    "../023e105f4ecef8ad9ca31a8372d0c3",
    123,
    ["023e105f4ecef8ad9ca31a8372d0c353"],
]


@pytest.mark.parametrize("value", INVALID_ACCOUNTS)
def test_validate_account_id_rejects(value: object) -> None:
    with pytest.raises(InputError) as caught:
        validate_account_id(value)
    assert caught.value.reason == "invalid_account_id"


@pytest.mark.parametrize("value", INVALID_ACCOUNTS)
def test_invalid_account_id_in_message(value: object) -> None:
    message = orjson.dumps({"investigate_id": "abc", "account_id": value})
    assert reason_of(message) == "invalid_account_id"


def test_account_id_with_trailing_newline_is_invalid() -> None:
    message = orjson.dumps({"investigate_id": "abc", "account_id": DEFAULT_ACCOUNT + "\n"})
    assert reason_of(message) == "invalid_account_id"


def test_validate_account_id_accepts_lowercase_hex() -> None:
    assert validate_account_id(DEFAULT_ACCOUNT) == DEFAULT_ACCOUNT


@pytest.mark.parametrize(
    "raw",
    [
        b"abc",
        b'"abc"',
        b'{"investigate_id": "abc"}',
        b'{"investigate_id": "abc", "account_id": null}',
    ],
)
def test_missing_account_id_without_default(raw: bytes) -> None:
    assert reason_of(raw, default=None) == "missing_account_id"


def test_invalid_id_is_reported_before_missing_account() -> None:
    assert reason_of(b"a/b", default=None) == "invalid_id"


def test_a_byte_order_mark_before_an_id_is_ignored() -> None:
    request = parse_message(
        "\ufeff4Njp3P0STMz2c02Q-2024-01-05T10:00:00-12345678".encode(),
        default_account_id="0" * 32,
        max_bytes=1000,
    )
    assert request.investigate_id == "4Njp3P0STMz2c02Q-2024-01-05T10:00:00-12345678"


def test_a_context_too_deep_to_write_back_is_refused_before_any_call() -> None:
    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    message = orjson.dumps({"investigate_id": "abc", "context": {"a": 1}})
    assert parse_message(message, default_account_id="0" * 32, max_bytes=10**6).context == {"a": 1}
    deep_text = '{"investigate_id": "abc", "context": ' + "[" * 300 + "1" + "]" * 300 + "}"
    with pytest.raises(InputError) as caught:
        parse_message(deep_text.encode(), default_account_id="0" * 32, max_bytes=10**6)
    assert caught.value.reason == "invalid_context"
