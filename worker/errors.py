"""Every error the worker raises on purpose, in one hierarchy.

    EnrichError                       base; ``retriable`` says whether a later try may succeed
    ├── ConfigError                   bad setting at start-up: stops the process with a fix
    ├── InputError                    a Kafka message we cannot turn into a request (DLQ)
    └── ApiError                      the Cloudflare call did not give usable detections
        ├── NotFoundError             the id does not exist there (DLQ, permanent)
        ├── AccountForbiddenError     403 for a message's own account_id (DLQ, permanent)
        ├── ApiRejectedError          another permanent refusal about this message (DLQ)
        ├── InvalidResponseError      a 200 whose body is not the documented shape (DLQ)
        ├── TransientApiError         5xx, HTML edge pages, timeouts, resets (retry)
        │   ├── RateLimitedError      429: the whole account is blocked until retry_after
        │   └── ApiUnavailableError   many calls in a row failed: the API is down; held,
        │                             retried without end, never sent to the DLQ
        └── AuthError                 401/403, codes 10000/6003: fatal for the worker, not the
                                      message; retried without end, never sent to the DLQ
    TransactionFailed                 exactly-once mode: the open Kafka transaction broke; the
                                      worker stops and restarts from the last committed one

Third-party exceptions (httpx, aiokafka, pydantic) are translated into these at the module
that talks to the library, with ``raise ... from exc``.
"""

from __future__ import annotations


class EnrichError(Exception):
    """Base of the worker's errors."""

    retriable: bool = False


class ConfigError(EnrichError):
    """A setting is invalid; the message names the setting and the fix."""


class InputError(EnrichError):
    """A message from the input topic cannot become an enrichment request.

    ``reason`` is the machine-readable code that goes into the DLQ record.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ApiError(EnrichError):
    """The detections call failed; carries what the DLQ record and the metrics need."""

    reason: str = "api_error"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        codes: tuple[int, ...] = (),
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.codes = codes


class NotFoundError(ApiError):
    """Cloudflare says the investigate id is unknown (7003/7000 or 404)."""

    reason = "not_found"


class ApiRejectedError(ApiError):
    """A permanent 4xx about this request that is not 'not found'."""

    reason = "api_rejected"


class InvalidResponseError(ApiError):
    """A successful answer whose JSON does not have the documented shape."""

    reason = "invalid_response"


class TransientApiError(ApiError):
    """A failure that a later attempt may not see."""

    reason = "retries_exhausted"
    retriable = True

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        codes: tuple[int, ...] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(detail, status=status, codes=codes)
        self.retry_after_s = retry_after_s


class RateLimitedError(TransientApiError):
    """HTTP 429: Cloudflare blocks every call of this user until ``retry_after_s``."""


class AccountForbiddenError(ApiError):
    """403 for a message whose account_id is not the configured one: that account only."""

    reason = "account_forbidden"


class ApiUnavailableError(TransientApiError):
    """The API has failed so many calls in a row that it is down, not this message."""


class AuthError(ApiError):
    """The credentials were refused; no message can succeed until they are fixed."""

    reason = "auth_failed"
    retriable = True


class TransactionFailed(EnrichError):
    """An exactly-once transaction could not take a send or a commit.

    Its outputs are aborted with it, so the messages it held are not done: they are neither
    committed nor sent to the DLQ, and the worker stops to restart from the last committed
    transaction.
    """
