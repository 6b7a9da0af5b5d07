"""Requests to the simulator's detections route, built as its HTTP server would parse them."""

from __future__ import annotations

from urllib.parse import quote, unquote

from worker.httpserver import Connection, Request
from worker.simulator import API_PREFIX, DEFAULT_TOKEN

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"


def detections_call(
    investigate_id: str,
    headers: dict[str, str] | None = None,
    *,
    token: str = DEFAULT_TOKEN,
    account: str = ACCOUNT,
    method: str = "GET",
    raw_path: str | None = None,
    sequence: int = 1,
    connection: Connection | None = None,
) -> Request:
    """A detections call for ``investigate_id``, with a Bearer ``token`` unless ``headers``.

    The id is percent-encoded as one path segment (as the worker sends it); ``raw_path``
    replaces the whole path, for requests no well-behaved client would send.
    """
    if raw_path is None:
        segment = quote(investigate_id, safe=":@")
        raw_path = (
            f"{API_PREFIX}/accounts/{account}/email-security/investigate/{segment}/detections"
        )
    return Request(
        method=method,
        raw_path=raw_path,
        path=unquote(raw_path),
        query={},
        headers={"authorization": f"Bearer {token}"} if headers is None else headers,
        sequence=sequence,
        connection=connection or Connection(),
    )
