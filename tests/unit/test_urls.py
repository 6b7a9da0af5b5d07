"""worker.cloudflare.client: the detections URL and the request DetectionsClient sends.

Also worker.cloudflare.request_builder: the URLs it builds from the parsed base URL are
exactly those httpx parses from the text, for every id here and several base URLs.

The investigate id is untrusted: it must become exactly one path segment and never change
the host, the query or the rest of the path. Checked on detections_url directly and on the
request an httpx.MockTransport receives, together with the Bearer / legacy auth headers.
"""

from __future__ import annotations

from urllib.parse import unquote

import httpx
import orjson
import pytest
from pydantic import SecretStr

from worker.budget import Budget
from worker.cloudflare.client import (
    Credentials,
    DetectionsClient,
    detections_path,
    detections_url,
)
from worker.cloudflare.request_builder import RequestBuilder
from worker.errors import InputError
from worker.observability import Metrics

BASE = "https://api.cloudflare.com/client/v4"
ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
PREFIX = f"/client/v4/accounts/{ACCOUNT}/email-security/investigate/"
REAL_IDS = [
    "4Njp3P0STMz2c02Q-2024-01-05T10:00:00-12345678",
    "47JJcT1w6GztQV7-email@example.com",
]
HOSTILE_IDS = [
    "..",
    ".",
    "../../../../zones",
    "..%2F..%2Fzones",
    "%2e%2e",
    "a/b",
    "a\\b",
    "/absolute",
    "//evil.example/x",
    "http://evil.example/",
    "https:evil.example",
    "@evil.example",
    "user:pass@evil.example",
    "evil.example:443",
    "a?admin=1",
    "?",
    "a#frag",
    "#",
    "a b",
    "a\tb",
    "a\r\nHost: evil.example",
    "a\nb",
    "abc\n",
    "a\x00b",
    "%00",
    "a;b",
    "a&b",
    "a%b",
    "~user",
    "é",
    "a\u2215b",
    "a\uff0fb",
    "a\u3002evil",
    "x" * 300,
    "",
]
OK_BODY = orjson.dumps({"success": True, "errors": [], "messages": [], "result": {}})


def segments(url: httpx.URL) -> list[str]:
    raw = url.raw_path.decode("ascii")
    assert "?" not in raw
    assert "#" not in raw
    return raw.split("/")[1:]


def assert_single_segment(url_text: str, investigate_id: str, account: str = ACCOUNT) -> None:
    url = httpx.URL(url_text)
    assert url.scheme == "https"
    assert url.host == "api.cloudflare.com"
    assert url.port is None
    assert url.query == b""
    assert url.fragment == ""
    parts = segments(url)
    assert len(parts) == 8, parts
    assert parts[:6] == ["client", "v4", "accounts", account, "email-security", "investigate"]
    assert parts[7] == "detections"
    assert url.raw_path.decode().startswith(PREFIX)
    assert unquote(parts[6]) == investigate_id
    assert parts[6] not in (".", "..")


@pytest.mark.parametrize("investigate_id", REAL_IDS)
def test_real_ids_become_one_segment(investigate_id: str) -> None:
    assert_single_segment(detections_url(BASE, ACCOUNT, investigate_id), investigate_id)


def test_real_id_url_is_exact() -> None:
    assert detections_url(BASE, ACCOUNT, REAL_IDS[1]) == (
        "https://api.cloudflare.com/client/v4/accounts/023e105f4ecef8ad9ca31a8372d0c353"
        "/email-security/investigate/47JJcT1w6GztQV7-email@example.com/detections"
    )


@pytest.mark.parametrize("base", [BASE, BASE + "/", BASE + "//"])
def test_trailing_slashes_of_base_url_are_ignored(base: str) -> None:
    assert detections_url(base, ACCOUNT, "abc") == detections_url(BASE, ACCOUNT, "abc")


@pytest.mark.parametrize("investigate_id", HOSTILE_IDS)
def test_hostile_id_is_rejected_or_stays_one_segment(investigate_id: str) -> None:
    try:
        url = detections_url(BASE, ACCOUNT, investigate_id)
    except InputError as exc:
        reason = exc.reason
    else:
        assert_single_segment(url, investigate_id)
        return
    assert reason == "invalid_id"


@pytest.mark.parametrize(
    "account", ["", "../x", ACCOUNT.upper(), ACCOUNT + "/..", "evil.example", ACCOUNT[:-1]]
)
def test_hostile_account_id_is_rejected(account: str) -> None:
    with pytest.raises(InputError) as caught:
        detections_url(BASE, account, "abc")
    assert caught.value.reason == "invalid_account_id"


def test_account_id_with_trailing_newline_is_rejected_or_safe() -> None:
    try:
        url = detections_url(BASE, ACCOUNT + "\n", "abc")
    except InputError:
        return
    assert_single_segment(url, "abc")


# --- through DetectionsClient and a MockTransport -----------------------------------------


class Recorder:
    """A MockTransport handler that records every request and answers 200."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, content=OK_BODY)


async def fetch(
    investigate_id: str,
    credentials: Credentials,
    metrics: Metrics,
    *,
    base: str = BASE,
    budget: Budget | None = None,
) -> Recorder:
    recorder = Recorder()
    budget = budget or Budget(calls=100, window_s=60)
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        client = DetectionsClient(
            base_url=base,
            credentials=credentials,
            http=http,
            budget=budget,
            metrics=metrics,
            max_in_flight=4,
        )
        await client.fetch(ACCOUNT, investigate_id)
    return recorder


BEARER = Credentials(token=SecretStr("tok-123"))
LEGACY = Credentials(email="soc@example.com", key=SecretStr("key-456"))


@pytest.mark.parametrize("investigate_id", [*REAL_IDS, "...", "a+b=c"])
async def test_transport_receives_one_segment(investigate_id: str, metrics: Metrics) -> None:
    recorder = await fetch(investigate_id, BEARER, metrics)
    [request] = recorder.requests
    assert request.method == "GET"
    assert_single_segment(str(request.url), investigate_id)


@pytest.mark.parametrize("investigate_id", HOSTILE_IDS)
async def test_transport_never_sees_a_second_segment(investigate_id: str, metrics: Metrics) -> None:
    budget = Budget(calls=100, window_s=60)
    try:
        recorder = await fetch(investigate_id, BEARER, metrics, budget=budget)
    except InputError:
        assert budget.remaining() == 100  # rejected before spending a call
        return
    [request] = recorder.requests
    assert_single_segment(str(request.url), investigate_id)


async def test_base_url_with_other_host_and_port(metrics: Metrics) -> None:
    recorder = await fetch("abc", BEARER, metrics, base="http://127.0.0.1:18787/client/v4/")
    url = recorder.requests[0].url
    assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 18787)
    assert url.raw_path == f"{PREFIX}abc/detections".encode()


async def test_bearer_headers(metrics: Metrics) -> None:
    recorder = await fetch("abc", BEARER, metrics)
    headers = recorder.requests[0].headers
    assert headers["authorization"] == "Bearer tok-123"
    assert headers["accept"] == "application/json"
    assert "x-auth-email" not in headers
    assert "x-auth-key" not in headers


async def test_legacy_email_and_key_headers(metrics: Metrics) -> None:
    recorder = await fetch("abc", LEGACY, metrics)
    headers = recorder.requests[0].headers
    assert headers["x-auth-email"] == "soc@example.com"
    assert headers["x-auth-key"] == "key-456"
    assert "authorization" not in headers


def test_token_wins_over_legacy_pair() -> None:
    both = Credentials(token=SecretStr("t"), email="soc@example.com", key=SecretStr("k"))
    assert both.headers() == {"authorization": "Bearer t"}


@pytest.mark.parametrize(
    "credentials",
    [Credentials(), Credentials(email="soc@example.com"), Credentials(key=SecretStr("k"))],
)
def test_incomplete_credentials_send_no_auth_header(credentials: Credentials) -> None:
    assert credentials.headers() == {}


def test_credentials_repr_hides_secrets() -> None:
    text = repr(BEARER) + repr(LEGACY)
    assert "tok-123" not in text
    assert "key-456" not in text


# --- RequestBuilder: the same URLs as httpx's own parsing ---------------------------------


@pytest.mark.parametrize(
    "base", [BASE, "http://127.0.0.1:18787/client/v4/", "http://h:1", "https://[::1]:8443/x"]
)
def test_request_builder_makes_the_urls_httpx_parsing_makes(base: str) -> None:
    builder = RequestBuilder(base, {})
    assert builder.fast  # the checks at start pass with the pinned httpx
    checked = 0
    for investigate_id in [*REAL_IDS, *HOSTILE_IDS, "...", "a+b=c"]:
        try:
            path = detections_path(ACCOUNT, investigate_id)
        except InputError:
            continue
        made = builder.get(path).url
        parsed = httpx.URL(detections_url(base, ACCOUNT, investigate_id))
        assert (str(made), made.raw_path, made.scheme, made.host, made.port) == (
            str(parsed),
            parsed.raw_path,
            parsed.scheme,
            parsed.host,
            parsed.port,
        )
        checked += 1
    assert checked > len(REAL_IDS)


def test_request_builder_parses_every_url_if_httpx_changes_its_parsed_form() -> None:
    builder = RequestBuilder(BASE, {})
    builder._base_reference = ("a", "tuple", "without", "_replace")
    assert not builder._fast_path_agrees()
    builder.fast = False
    assert builder.get("/a/b").url == httpx.URL(BASE + "/a/b")


async def test_each_request_carries_its_headers_once(metrics: Metrics) -> None:
    recorder = await fetch("abc", BEARER, metrics, base="http://127.0.0.1:18787/client/v4")
    headers = recorder.requests[0].headers
    names = sorted(name.decode().lower() for name, _ in headers.raw)
    assert names == ["accept", "accept-encoding", "authorization", "host", "user-agent"]
    assert headers["host"] == "127.0.0.1:18787"
    assert headers["user-agent"].startswith("enrich-worker/")
