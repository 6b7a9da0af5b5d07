"""Pre-flight checks: is the configuration usable before the worker starts consuming?

Used by ``enrich-worker check`` (every check, one line each) and by ``run`` (topics must
exist, so a typo in a topic name fails at start instead of idling with no partitions).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry

from worker.budget import Budget
from worker.cloudflare.client import Credentials, DetectionsClient, build_http_client
from worker.errors import ApiError, AuthError, ConfigError, NotFoundError
from worker.kafka import partitions_of
from worker.observability import Metrics
from worker.settings import KafkaSettings, Settings

PROBE_ID = "enrich-worker-preflight-probe"
"""An id that does not exist: a 'not found' answer proves the URL and the token work."""


@dataclass(frozen=True)
class CheckResult:
    """One check: what was checked, whether it passed, and what to do if not."""

    name: str
    ok: bool
    detail: str


async def require_topics(settings: KafkaSettings) -> None:
    """Raise ConfigError naming every configured topic that does not exist."""
    missing = [
        topic
        for topic in (settings.input_topic, settings.output_topic, settings.dlq_topic)
        if not await partitions_of(settings.bootstrap_servers, topic)
    ]
    if missing:
        raise ConfigError(
            f"topics {', '.join(missing)} do not exist on {settings.bootstrap_servers}: create "
            "them (enrich-worker create-topics) or fix ENRICH_KAFKA__INPUT_TOPIC / "
            "OUTPUT_TOPIC / DLQ_TOPIC"
        )


async def run_checks(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[CheckResult]:
    """Every check, in order; later checks still run when an earlier one fails."""
    results = [_credentials(settings)]
    try:
        await require_topics(settings.kafka)
        results.append(
            CheckResult("kafka", True, f"topics exist on {settings.kafka.bootstrap_servers}")
        )
    except ConfigError as exc:
        results.append(CheckResult("kafka", False, str(exc)))
    if results[0].ok:
        results.append(await _api(settings, transport))
    return results


def _credentials(settings: Settings) -> CheckResult:
    try:
        settings.cloudflare.require_credentials()
    except ConfigError as exc:
        return CheckResult("credentials", False, str(exc))
    kind = "API token" if settings.cloudflare.api_token else "global API key"
    account = settings.cloudflare.account_id or "none (every message must carry account_id)"
    return CheckResult("credentials", True, f"{kind} set; default account {account}")


async def _api(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> CheckResult:
    cf = settings.cloudflare
    if cf.account_id is None:
        return CheckResult("api", True, "not probed: set cloudflare.account_id to probe the API")
    account = cf.account_id
    async with build_http_client(cf, transport) as http:
        client = DetectionsClient(
            base_url=cf.base_url,
            credentials=Credentials.from_settings(cf),
            http=http,
            budget=Budget(calls=1, window_s=1),
            metrics=Metrics(CollectorRegistry()),
            max_in_flight=1,
            default_retry_after_s=cf.default_retry_after_s,
        )
        try:
            await client.fetch(account, PROBE_ID)
        except NotFoundError:
            return CheckResult("api", True, f"{cf.base_url} answered and accepted the credentials")
        except AuthError as exc:
            return CheckResult(
                "api",
                False,
                f"{cf.base_url} refused the credentials ({exc.detail}): the token needs the "
                "permission 'Cloud Email Security: Read' on this account",
            )
        except ApiError as exc:
            return CheckResult("api", False, f"{cf.base_url}: {exc.detail}; check base_url")
    return CheckResult("api", True, f"{cf.base_url} answered and accepted the credentials")
