"""The detections GET requests of one base URL, built without httpx parsing each URL again.

httpx parses and validates every URL string it is given. In the worker's profile that was
the largest single cost of a call outside httpcore (~7 % of the CPU per event,
bench/README.md). Our URLs are the one base URL (parsed by httpx once, at start) followed
by a path we build from validated, percent-encoded parts, so each call's URL is the parsed
base with its path extended.

That uses httpx's parsed form of a URL (``httpx.URL._uri_reference``, a named tuple), which
is not public API. The builder therefore checks at start, on a set of probe paths, that the
URLs it makes equal what ``httpx.URL(text)`` gives; if a future httpx differs, every URL is
parsed the public way (slower, same result).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

_EMPTY_BODY = httpx.ByteStream(b"")
"""A GET's body; passing it as ``stream`` also keeps httpx from adding headers we already set."""

_PROBE_PATHS = (
    "/accounts/023e105f4ecef8ad9ca31a8372d0c353/email-security/investigate/abc/detections",
    "/accounts/0/email-security/investigate/a%2Fb%3Fc%23d%20e:f@g/detections",
    "/x/%C3%A9%E2%82%AC~-._",
)


class RequestBuilder:
    """GET requests for ``base_url`` + a path, with the same headers on every one."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        self._base_text = base_url.rstrip("/")
        base = httpx.URL(self._base_text)
        # httpx adds Host itself only when it prepares a request, which passing the body as
        # a stream skips: set it here, as httpx would (no port when it is the default).
        self._headers = httpx.Headers({**headers, "host": base.netloc.decode("ascii")})
        self._base_reference: Any = getattr(base, "_uri_reference", None)
        self._base_path = base.path.rstrip("/")  # "http://host" has the path "/"
        self.fast = self._fast_path_agrees()
        """True when URLs are made from the parsed base (the checks at start passed)."""

    def get(self, path: str) -> httpx.Request:
        """The GET request of ``path``: percent-encoded already, starting with ``/``."""
        return httpx.Request("GET", self.url(path), headers=self._headers, stream=_EMPTY_BODY)

    def url(self, path: str) -> httpx.URL:
        """``base_url`` + ``path`` as httpx would parse it."""
        return self._from_parsed_base(path) if self.fast else httpx.URL(self._base_text + path)

    def _from_parsed_base(self, path: str) -> httpx.URL:
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = self._base_reference._replace(path=self._base_path + path)
        return url

    def _fast_path_agrees(self) -> bool:
        if not hasattr(self._base_reference, "_replace"):
            return False
        try:
            for path in _PROBE_PATHS:
                made, parsed = self._from_parsed_base(path), httpx.URL(self._base_text + path)
                if made != parsed or made.raw_path != parsed.raw_path:
                    return False
        except (AttributeError, TypeError, ValueError):
            return False
        return True
