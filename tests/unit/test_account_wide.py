"""What one failed call says about the whole account: outages and foreign accounts."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from tests.unit.conftest import FakeClock
from worker.budget import Budget
from worker.cloudflare.client import Credentials, DetectionsClient
from worker.errors import AccountForbiddenError, ApiUnavailableError, AuthError, TransientApiError
from worker.observability import Metrics

OURS = "023e105f4ecef8ad9ca31a8372d0c353"
THEIRS = "11111111111111111111111111111111"
OK = orjson.dumps({"success": True, "errors": [], "messages": [], "result": {}})
DENIED = orjson.dumps(
    {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}],
     "messages": [], "result": None}
)  # fmt: skip


def client(http: httpx.AsyncClient, budget: Budget) -> DetectionsClient:
    return DetectionsClient(
        base_url="https://api.example/client/v4",
        credentials=Credentials(token=SecretStr("t")),
        http=http,
        budget=budget,
        metrics=Metrics(CollectorRegistry()),
        max_in_flight=4,
        outage_after=5,
        default_account=OURS,
        auth_retry_s=30,
    )


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused")


def not_the_api(request: httpx.Request) -> httpx.Response:
    """What a wrong base_url path behind a web server answers for every id."""
    return httpx.Response(404, content=b"<html><body>404 Not Found</body></html>")


@pytest.mark.parametrize("failure", [refused, not_the_api])
async def test_many_failures_in_a_row_hold_every_call_until_one_succeeds(
    failure: Callable[[httpx.Request], httpx.Response],
) -> None:
    clock = FakeClock()
    budget = Budget(calls=1000, window_s=60, clock=clock, sleep=clock.sleep)
    down = True

    def handler(request: httpx.Request) -> httpx.Response:
        if down:
            return failure(request)
        return httpx.Response(200, content=OK)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        api = client(http, budget)
        for _ in range(4):
            with pytest.raises(TransientApiError) as caught:
                await api.fetch(OURS, "a")
            assert type(caught.value) is TransientApiError  # still the message's own try
        assert not api.api_unavailable
        with pytest.raises(ApiUnavailableError):
            await api.fetch(OURS, "a")
        assert api.api_unavailable
        assert budget.blocked_for_s == 30
        down = False
        await api.fetch(OURS, "a")  # waits out the hold, then the API answers
        assert clock.now == 30
    assert not api.api_unavailable


async def test_403_for_a_foreign_account_is_that_message_s_problem_only() -> None:
    budget = Budget(calls=1000, window_s=60)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(403, content=DENIED))
    ) as http:
        api = client(http, budget)
        with pytest.raises(AccountForbiddenError) as caught:
            await api.fetch(THEIRS, "a")
        assert caught.value.reason == "account_forbidden"
        assert not api.credentials_refused
        assert budget.blocked_for_s == 0
        with pytest.raises(AuthError):
            await api.fetch(OURS, "a")
        assert api.credentials_refused
        assert budget.blocked_for_s > 0
