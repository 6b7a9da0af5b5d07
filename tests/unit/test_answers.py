"""worker.cloudflare.answers.parse_answer and what DetectionsClient does with each outcome.

parse_answer is the one place that maps (status, headers, body) to Detections or an
ApiError subclass: not found, auth, rate limited (with retry-after), transient, rejected,
invalid response. The client part checks that a 429 blocks the shared Budget, and that
transport failures from httpx become TransientApiError and are counted in the metrics.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from worker.budget import Budget
from worker.cloudflare.answers import parse_answer, parse_retry_after
from worker.cloudflare.client import Credentials, DetectionsClient
from worker.cloudflare.models import Detections
from worker.errors import (
    ApiError,
    ApiRejectedError,
    AuthError,
    InvalidResponseError,
    NotFoundError,
    RateLimitedError,
    TransientApiError,
)
from worker.observability import Metrics

# A verbatim copy of /work/shared/cloudflare/examples/detections-reference-example.json.
REFERENCE_EXAMPLE = Path(__file__).parent / "data" / "detections-reference-example.json"
ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
DEFAULT_RETRY_AFTER = 300.0
HTML_520 = (
    b"<!DOCTYPE html><html><head><title>api.cloudflare.com | 520: Web server is returning an "
    b"unknown error</title></head><body>Error code 520</body></html>"
)


def body(*codes: int, success: bool = False, result: Any = None) -> bytes:
    errors = [{"code": c, "message": f"error {c}"} for c in codes]
    return orjson.dumps({"result": result, "success": success, "errors": errors, "messages": []})


def ok(result: Any) -> bytes:
    return body(success=True, result=result)


def parse(status: int, content: bytes, headers: dict[str, str] | None = None) -> Detections:
    return parse_answer(status, headers or {}, content, default_retry_after_s=DEFAULT_RETRY_AFTER)


def raises(
    kind: type[ApiError], status: int, content: bytes, headers: dict[str, str] | None = None
) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(status, content, headers)
    assert type(caught.value) is kind, caught.value
    assert caught.value.status == status
    return caught.value


# --- success -------------------------------------------------------------------------------


def test_200_success_gives_detections() -> None:
    result = {
        "action": "QUARANTINED",
        "final_disposition": "MALICIOUS",
        "headers": [{"name": "From", "value": "a@example.com"}],
        "links": [{"href": "https://example.com", "text": None}],
        "attachments": [{"size": 10}],
        "findings": None,
        "sender_info": {"ip": "192.0.2.1", "as_number": 13335},
        "threat_categories": [{"id": 1234, "name": "IP Reputation", "description": None}],
        "validation": {"spf": "fail", "dkim": "pass", "dmarc": "none", "comment": None},
    }
    detections = parse(200, ok(result))
    assert detections.action == "QUARANTINED"
    assert detections.final_disposition == "MALICIOUS"
    assert detections.headers[0].value == "a@example.com"
    assert detections.attachments[0].size == 10
    assert detections.findings is None
    assert detections.sender_info is not None
    assert detections.sender_info.as_number == 13335
    assert detections.validation is not None
    assert detections.validation.spf == "fail"


def test_reference_example_with_errors_next_to_success_parses() -> None:
    raw = REFERENCE_EXAMPLE.read_bytes()
    assert json.loads(raw)["errors"], "the example carries errors next to success: true"
    detections = parse(200, raw)
    assert detections.final_disposition == "MALICIOUS"
    assert detections.findings is not None
    assert detections.findings[0].score == 0
    assert detections.attachments[0].sha256 == "sha256"


def test_unknown_keys_and_unknown_enum_values_are_kept() -> None:
    detections = parse(200, ok({"final_disposition": "NEW-KIND", "brand_new_field": [1]}))
    assert detections.final_disposition == "NEW-KIND"


@pytest.mark.parametrize("success", [False, None, "true", 1])
def test_200_without_success_true_is_rejected(success: object) -> None:
    content = orjson.dumps({"success": success, "errors": [], "messages": [], "result": {}})
    raises(ApiRejectedError, 200, content)


def test_200_success_false_with_error_codes_is_rejected_with_codes() -> None:
    error = raises(ApiRejectedError, 200, body(1001, 1002))
    assert error.codes == (1001, 1002)
    assert "1001" in error.detail


# --- not found, auth, rate limit ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "codes"),
    [(404, (7003,)), (404, ()), (404, (7000,)), (400, (7003,)), (400, (7000,)), (200, (7003,))],
)
def test_not_found(status: int, codes: tuple[int, ...]) -> None:
    error = raises(NotFoundError, status, body(*codes))
    assert error.codes == codes
    assert error.reason == "not_found"
    assert not error.retriable


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (404, b"<html>Not Found</html>"),
        (404, b""),
        (404, b'{"error": "no"}'),
        (400, b"<html>Bad Request</html>"),
        (200, b"<html>Welcome</html>"),
        (200, b'{"ok": true}'),  # another JSON service behind a wrong base_url
        (200, orjson.dumps([{"success": True}])),
    ],
)
def test_an_answer_without_cloudflare_envelope_is_retried_not_a_verdict_on_the_id(
    status: int, content: bytes
) -> None:
    """A wrong base_url or a proxy answers the same for every id: not a reason to DLQ them
    (a 200 with another service's JSON sent every message to the DLQ as api_rejected)."""
    error = raises(TransientApiError, status, content)
    assert error.retriable
    assert "cloudflare.base_url" in error.detail


@pytest.mark.parametrize(
    ("status", "codes"),
    [(401, ()), (403, ()), (403, (10000,)), (400, (6003,)), (400, (10000,)), (404, (10000,))],
)
def test_auth_errors(status: int, codes: tuple[int, ...]) -> None:
    error = raises(AuthError, status, body(*codes))
    assert error.retriable
    assert error.reason == "auth_failed"


def test_auth_error_with_error_chain_and_unknown_keys() -> None:
    content = orjson.dumps(
        {
            "result": None,
            "success": False,
            "errors": [
                {
                    "code": 6003,
                    "message": "Invalid request headers",
                    "error_chain": [{"code": 6111, "message": "Invalid format"}],
                }
            ],
            "messages": [{"code": 1000, "message": "m", "type": None}],
        }
    )
    error = raises(AuthError, 400, content)
    assert error.codes == (6003,)


def test_429_with_retry_after_seconds() -> None:
    error = raises(RateLimitedError, 429, body(971), {"retry-after": "120"})
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == 120.0
    assert error.codes == (971,)
    assert error.retriable


def test_429_without_retry_after_uses_default() -> None:
    error = raises(RateLimitedError, 429, body(971))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == DEFAULT_RETRY_AFTER


def test_429_with_unparseable_retry_after_uses_default() -> None:
    error = raises(RateLimitedError, 429, b"", {"retry-after": "soon"})
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == DEFAULT_RETRY_AFTER


def test_429_with_http_date_retry_after() -> None:
    when = formatdate(time.time() + 120, usegmt=True)
    error = raises(RateLimitedError, 429, b"", {"retry-after": when})
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s is not None
    assert 110 <= error.retry_after_s <= 121


def test_code_971_without_429_is_rate_limited() -> None:
    error = raises(RateLimitedError, 403, body(971))
    assert error.status == 403


def test_429_with_non_ascii_digit_retry_after_is_still_rate_limited() -> None:
    error = raises(RateLimitedError, 429, b"", {"retry-after": "\u00b2"})
    assert isinstance(error, RateLimitedError)


# --- transient -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 520, 522, 524, 408, 409])
def test_transient_status(status: int) -> None:
    error = raises(TransientApiError, status, body(1000))
    assert error.retriable
    assert error.reason == "retries_exhausted"


def test_html_520_page_is_transient() -> None:
    error = raises(TransientApiError, 520, HTML_520)
    assert error.codes == ()
    assert error.detail == "HTTP 520"


def test_503_keeps_retry_after() -> None:
    error = raises(TransientApiError, 503, b"", {"retry-after": "7"})
    assert isinstance(error, TransientApiError)
    assert error.retry_after_s == 7.0


def test_transient_without_retry_after_has_none() -> None:
    error = raises(TransientApiError, 502, HTML_520)
    assert isinstance(error, TransientApiError)
    assert error.retry_after_s is None


@pytest.mark.parametrize("status", [400, 410, 422])
def test_4xx_with_should_retry_true_is_transient(status: int) -> None:
    raises(TransientApiError, status, body(1234), {"x-should-retry": "true"})


@pytest.mark.parametrize("status", [400, 405, 410, 422])
def test_other_4xx_is_rejected(status: int) -> None:
    error = raises(ApiRejectedError, status, body(1234))
    assert error.codes == (1234,)
    assert not error.retriable


def test_4xx_with_should_retry_false_is_rejected() -> None:
    raises(ApiRejectedError, 400, body(1234), {"x-should-retry": "false"})


@pytest.mark.parametrize("content", [b"", b"<html>ok</html>", b'{"result": {', b"null"])
def test_200_that_is_not_json_is_transient(content: bytes) -> None:
    raises(TransientApiError, 200, content)


# --- invalid response ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        ok([]),
        ok([{"action": "x"}]),
        ok(None),
        ok("result"),
        orjson.dumps({"success": True, "errors": [], "messages": []}),
        ok({"headers": ["From: a@example.com"]}),
        ok({"headers": [{"name": 1, "value": "x"}]}),
        ok({"headers": {"name": "From", "value": "x"}}),
        ok({"attachments": [{"size": "big"}]}),
        ok({"sender_info": "192.0.2.1"}),
    ],
)
def test_200_with_wrong_shape_is_invalid_response(content: bytes) -> None:
    error = raises(InvalidResponseError, 200, content)
    assert error.reason == "invalid_response"
    assert not error.retriable


def test_invalid_response_detail_names_the_field() -> None:
    error = raises(InvalidResponseError, 200, ok({"headers": [{"name": 1, "value": "x"}]}))
    assert error.detail.startswith("result.headers.0.name")


@pytest.mark.parametrize("status", [201, 204, 206])
def test_other_2xx_is_invalid_response(status: int) -> None:
    raises(InvalidResponseError, status, ok({}))


# --- parse_retry_after -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("1", 1.0),
        ("300", 300.0),
        (" 42 ", 42.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: no negative wait
        ("Wed, 99 Foo 2015", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = 1445412450.0  # 2015-10-21T07:27:30Z
    assert parse_retry_after(value, now=now) == expected


# --- DetectionsClient: rate limit blocks the budget, transport errors ------------------------


def make_client(http: httpx.AsyncClient, budget: Budget, metrics: Metrics) -> DetectionsClient:
    return DetectionsClient(
        base_url="https://api.cloudflare.com/client/v4",
        credentials=Credentials(token=SecretStr("t")),
        http=http,
        budget=budget,
        metrics=metrics,
        max_in_flight=2,
        default_retry_after_s=DEFAULT_RETRY_AFTER,
    )


async def call(handler: Any, budget: Budget, metrics: Metrics) -> Detections:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        return await make_client(http, budget, metrics).fetch(ACCOUNT, "abc")


@pytest.mark.parametrize(
    ("headers", "blocked"), [({"Retry-After": "120"}, 120.0), ({}, DEFAULT_RETRY_AFTER)]
)
async def test_429_blocks_the_shared_budget(
    clock: Any, metrics: Metrics, headers: dict[str, str], blocked: float
) -> None:
    budget = Budget(calls=10, window_s=60, clock=clock, sleep=clock.sleep)
    with pytest.raises(RateLimitedError):
        await call(
            lambda _: httpx.Response(429, headers=headers, content=body(971)), budget, metrics
        )
    assert budget.blocked_for_s == blocked
    waited = await budget.acquire()  # the next call of any message waits out the block
    assert waited == blocked
    assert clock.now == blocked


async def test_the_ratelimit_figure_of_a_429_is_not_taken_for_a_count(
    clock: Any, metrics: Metrics
) -> None:
    """A blocked account answers r=0: not 9 calls of another tool to hold after the block."""
    budget = Budget(calls=10, window_s=60, clock=clock, sleep=clock.sleep)
    blocked = {"retry-after": "5", "ratelimit": '"default";r=0;t=5'}
    with pytest.raises(RateLimitedError):
        await call(
            lambda _: httpx.Response(429, headers=blocked, content=body(971)), budget, metrics
        )
    clock.now = 5.0  # the block is over
    assert budget.remaining() == 9  # only the refused call itself is counted


async def test_errors_about_one_message_do_not_block_the_budget(
    clock: Any, metrics: Metrics
) -> None:
    budget = Budget(calls=10, window_s=60, clock=clock, sleep=clock.sleep)
    for status in (500, 404, 400):
        with pytest.raises(ApiError):
            await call(lambda _, s=status: httpx.Response(s, content=body(1000)), budget, metrics)
    assert budget.blocked_for_s == 0
    assert budget.remaining() == 7


async def test_refused_credentials_hold_every_call_and_log_once_per_interval(
    clock: Any, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    budget = Budget(calls=10, window_s=600, clock=clock, sleep=clock.sleep)
    refused = lambda _: httpx.Response(403, content=body(10000))  # noqa: E731
    with pytest.raises(AuthError):
        await call(refused, budget, metrics)
    assert budget.blocked_for_s == 60.0  # auth_retry_s: one probe per interval, not a storm
    async with httpx.AsyncClient(transport=httpx.MockTransport(refused)) as http:
        client = make_client(http, budget, metrics)
        for _ in range(3):  # each waits out the block, then fails again
            with pytest.raises(AuthError):
                await client.fetch(ACCOUNT, "abc")
    assert clock.now == 180.0
    refusals = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
    # One line from the first client, one for the second client's three failures: the log
    # throttle runs on the real clock, and these three happened within a second of it.
    assert len(refusals) == 2


async def test_success_is_counted_by_status(registry: CollectorRegistry, metrics: Metrics) -> None:
    budget = Budget(calls=10, window_s=60)
    detections = await call(lambda _: httpx.Response(200, content=ok({})), budget, metrics)
    assert detections == Detections()
    count = registry.get_sample_value("enrich_api_requests_total", {"status": "200"})
    assert count == 1
    assert registry.get_sample_value("enrich_api_request_duration_seconds_count") == 1
    assert registry.get_sample_value("enrich_api_requests_in_flight") == 0


def raising(exc: Exception) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (httpx.ConnectError("refused"), "transport_error"),
        (httpx.RemoteProtocolError("peer closed"), "transport_error"),
        (httpx.ReadError("reset"), "transport_error"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.PoolTimeout("full"), "timeout"),
    ],
)
async def test_transport_failure_is_transient_and_counted(
    exc: Exception, label: str, registry: CollectorRegistry, metrics: Metrics
) -> None:
    budget = Budget(calls=10, window_s=60)
    with pytest.raises(TransientApiError) as caught:
        await call(raising(exc), budget, metrics)
    assert type(caught.value) is TransientApiError
    assert caught.value.status is None
    assert type(exc).__name__ in caught.value.detail
    assert registry.get_sample_value("enrich_api_requests_total", {"status": label}) == 1
    assert registry.get_sample_value("enrich_api_requests_in_flight") == 0
    assert budget.remaining() == 9  # the attempt was counted against the budget


async def test_corrupt_compressed_body_is_transient(metrics: Metrics) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip")

    with pytest.raises(TransientApiError):
        await call(handler, Budget(calls=10, window_s=60), metrics)


async def test_budget_wait_is_counted(
    clock: Any, registry: CollectorRegistry, metrics: Metrics
) -> None:
    budget = Budget(calls=1, window_s=60, clock=clock, sleep=clock.sleep)
    answer = lambda _: httpx.Response(200, content=ok({}))  # noqa: E731
    await call(answer, budget, metrics)
    await call(answer, budget, metrics)
    assert clock.now == 60
    assert registry.get_sample_value("enrich_budget_wait_seconds_total") == 60
