"""Typed settings: defaults < TOML config file < ENRICH_* environment variables.

Built once at start-up and frozen. Secrets are ``SecretStr`` (never printed) and can be
read from files (``*_file`` settings) so that they come from a mounted secret, not env.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from worker.errors import ConfigError

ENV_PREFIX = "ENRICH_"
CONFIG_FILE_ENV = "ENRICH_CONFIG_FILE"
_ACCOUNT_ID = re.compile(r"[0-9a-f]{32}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """Where ids come from and where events and DLQ records go."""

    bootstrap_servers: str = "127.0.0.1:19092"
    input_topic: str = "email-investigate-ids"
    output_topic: str = "email-enrichment-events"
    dlq_topic: str = "email-enrichment-dlq"
    group_id: str = "enrich-worker"
    client_id: str = "enrich-worker"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = Field(default=500, ge=1, le=10_000)
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    linger_ms: int = Field(default=5, ge=0, le=1_000)
    # Events are ~2-3 kB: aiokafka's default batch (16 kB) holds a handful, and every send
    # that finds it full waits for a drain; a larger batch cut the worker's CPU per event
    # by ~15 % (bench/README.md). Lowered at start to fit the topics' max.message.bytes.
    max_batch_bytes: int = Field(default=262_144, ge=16_384, le=1_000_000)
    transactional_id: str | None = None


def _secret_problem(secret: str) -> str | None:
    """Why a token or key cannot be sent, or None."""
    if not secret.strip():
        return "is empty"
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in secret):
        # It goes into an HTTP header: httpx could not send it, and every call would fail
        # inside the worker instead of at start.
        return "contains whitespace, control or non-ASCII characters"
    return None


class CloudflareSettings(_Section):
    """The detections API: address, account, credentials, timeouts, budget."""

    base_url: str = "https://api.cloudflare.com/client/v4"
    account_id: str | None = None
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    auth_email: str | None = None
    auth_key: SecretStr | None = None
    auth_key_file: Path | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_in_flight: int = Field(default=16, ge=1, le=1_000)
    min_in_flight: int = Field(default=2, ge=1, le=1_000)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    max_retry_age_s: float = Field(default=900.0, gt=0)
    budget_calls: int = Field(default=1200, ge=1)
    budget_window_s: float = Field(default=300.0, gt=0)
    budget_safety: float = Field(default=0.9, gt=0, le=1)
    default_retry_after_s: float = Field(default=300.0, ge=0)
    cache_ttl_s: float = Field(default=600.0, ge=0)
    # The default budget lets through about 2,200 calls per default TTL: 10,000 answers
    # leave room for a larger budget; the byte bound keeps memory flat whatever their size.
    cache_max_entries: int = Field(default=10_000, ge=0)
    cache_max_bytes: int = Field(default=32 * 1024 * 1024, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in ("api_token", "auth_key"):
            path = data.get(f"{name}_file")
            if path:
                if data.get(name):
                    raise ValueError(f"set {name} or {name}_file, not both")
                try:
                    secret = Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ValueError(f"cannot read {name}_file {path}: {exc.strerror}") from None
                problem = _secret_problem(secret)
                if problem:  # named here: the field's own error would name {name}
                    raise ValueError(f"{name}_file {path}: the secret {problem}")
                data[name] = secret
        return data

    @field_validator("account_id")
    @classmethod
    def _check_account_id(cls, value: str | None) -> str | None:
        if value is not None and not _ACCOUNT_ID.fullmatch(value):
            raise ValueError("must be 32 lowercase hex characters")
        return value

    @field_validator("api_token", "auth_key")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        problem = None if value is None else _secret_problem(value.get_secret_value())
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("auth_email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.strip() or any(c.isspace() or not c.isascii() for c in value)
        ):
            raise ValueError("must be the account's e-mail in ASCII, without spaces")
        return value

    @model_validator(mode="after")
    def _check(self) -> CloudflareSettings:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with https:// (or http:// for the simulator)")
        if "@" in urlsplit(self.base_url).netloc:
            # A user:password@ in the URL would be printed by every message that names
            # base_url; Cloudflare takes credentials only in headers.
            raise ValueError(
                "base_url must not carry credentials (user:password@): set "
                "cloudflare.api_token, or auth_email and auth_key"
            )
        if not self.base_url.rstrip("/").endswith("/client/v4"):
            # Cloudflare answers an unknown path with 7003 "No route", which would send
            # every message to the DLQ as not_found.
            raise ValueError(
                "base_url must end with /client/v4, e.g. https://api.cloudflare.com/client/v4"
            )
        if self.api_token is None and (self.auth_email is None) != (self.auth_key is None):
            raise ValueError("auth_email and auth_key must be set together")
        return self

    @property
    def effective_budget(self) -> int:
        """Calls allowed per window after the safety factor, at least 1."""
        return max(1, int(self.budget_calls * self.budget_safety))

    def require_credentials(self) -> None:
        """Fail with the fix when no credentials or default account are configured."""
        if self.api_token is None and self.auth_key is None:
            raise ConfigError(
                "no Cloudflare credentials: set ENRICH_CLOUDFLARE__API_TOKEN "
                "(or cloudflare.api_token_file in the config file), or the legacy pair "
                "ENRICH_CLOUDFLARE__AUTH_EMAIL + ENRICH_CLOUDFLARE__AUTH_KEY"
            )


class PipelineSettings(_Section):
    """Bounds and timings of the run loop."""

    max_pending_messages: int = Field(default=2_000, ge=1)
    max_pending_per_partition: int = Field(default=500, ge=1)
    exactly_once: bool = False
    commit_interval_s: float = Field(default=1.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    stuck_after_s: float = Field(default=600.0, gt=0)
    rebalance_grace_s: float = Field(default=5.0, ge=0)
    max_message_bytes: int = Field(default=65_536, ge=64)


class MetricsSettings(_Section):
    """The /metrics, /healthz and /readyz HTTP endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65_535)


class LogSettings(_Section):
    """Log level and format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """All settings of the worker. See config/example.toml for each one explained."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    cloudflare: CloudflareSettings = CloudflareSettings()
    pipeline: PipelineSettings = PipelineSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the config file (argument or ENRICH_CONFIG_FILE) and the env.

    Raises ConfigError with every invalid setting named as its env var.
    """
    _reject_unknown_env()
    path = config_file or _env_path(CONFIG_FILE_ENV)
    if path is not None and not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist (set by --config or {CONFIG_FILE_ENV})"
        )

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path)) from None
    except ValueError as exc:  # a TOML syntax error surfaces as ValueError
        raise ConfigError(f"config file {path}: {exc}") from None
    return loaded


def _reject_unknown_env() -> None:
    """A misspelt ENRICH_<SECTION>__<NAME> would be ignored silently: refuse it instead."""
    known = {
        f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
        for section, info in Settings.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        for name in info.annotation.model_fields
    }
    unknown = sorted(
        k for k in os.environ if k.startswith(ENV_PREFIX) and "__" in k and k.upper() not in known
    )
    if unknown:
        raise ConfigError(
            f"unknown settings in the environment: {', '.join(unknown)} "
            "(see config/example.toml or the README for the names)"
        )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _explain(exc: ValidationError, path: Path | None) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors(include_input=False, include_url=False):
        dotted = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + "__".join(str(p).upper() for p in err["loc"])
        if len(err["loc"]) == 1:  # a rule across a section's settings
            env += "__*"
        where = f" ({env}" + (f" or {dotted} in {path})" if path else ")")
        lines.append(f"  {dotted or '<root>'}{where}: {err['msg']}")
    return "\n".join(lines)
