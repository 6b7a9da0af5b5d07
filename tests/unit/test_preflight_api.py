"""`enrich-worker check`'s API probe: what each kind of answer to the probe id says."""

from __future__ import annotations

import httpx
import orjson
import pytest
from pydantic import SecretStr

from worker.preflight import _api
from worker.settings import CloudflareSettings, Settings

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"


def envelope(status: int, code: int) -> httpx.Response:
    errors = [{"code": code, "message": f"error {code}"}]
    body = {"success": False, "errors": errors, "messages": [], "result": None}
    return httpx.Response(status, content=orjson.dumps(body))


@pytest.mark.parametrize(
    ("answer", "ok", "says"),
    [
        # The probe id does not exist: Cloudflare answered, and took the credentials.
        (envelope(404, 7003), True, "accepted the credentials"),
        (envelope(403, 10000), False, "Cloud Email Security: Read"),
        # A web server in front of a wrong path: not Cloudflare, whatever the status says.
        (httpx.Response(404, content=b"<html>Not Found</html>"), False, "check base_url"),
    ],
)
async def test_the_probe_tells_cloudflare_from_whatever_else_answers(
    answer: httpx.Response, ok: bool, says: str
) -> None:
    settings = Settings(
        cloudflare=CloudflareSettings(account_id=ACCOUNT, api_token=SecretStr("t"), max_attempts=1)
    )
    result = await _api(settings, httpx.MockTransport(lambda _: answer))
    assert result.ok is ok, result
    assert says in result.detail
