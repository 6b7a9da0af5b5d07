"""worker.settings.load_settings: defaults < TOML file < ENRICH_* env < keyword overrides.

Also: secrets read from files and never shown (repr, str, JSON dump, ConfigError text),
errors that name the environment variable to fix, unknown keys rejected, a missing config
file, and require_credentials. Every test starts from an environment without ENRICH_*.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import CONFIG_FILE_ENV, Settings, load_settings

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
TOKEN = "cf-token-Zq8v3-very-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ENRICH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(*args, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.kafka.input_topic == "email-investigate-ids"
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.cloudflare.base_url == "https://api.cloudflare.com/client/v4"
    assert settings.cloudflare.account_id is None
    assert settings.cloudflare.api_token is None
    assert settings.cloudflare.max_attempts == 5
    assert settings.cloudflare.effective_budget == 1080  # 1200 * 0.9
    assert settings.pipeline.max_message_bytes == 65_536
    assert settings.log.format == "json"


def test_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_KAFKA__INPUT_TOPIC", "ids-from-env")
    monkeypatch.setenv("ENRICH_CLOUDFLARE__MAX_IN_FLIGHT", "7")
    settings = load_settings()
    assert settings.kafka.input_topic == "ids-from-env"
    assert settings.cloudflare.max_in_flight == 7
    assert settings.kafka.output_topic == "email-enrichment-events"  # untouched default


def test_toml_file_and_env_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        '[kafka]\ninput_topic = "from-file"\noutput_topic = "out-file"\n'
        f'[cloudflare]\naccount_id = "{ACCOUNT}"\nbudget_calls = 600\n',
    )
    from_file = load_settings(path)
    assert from_file.kafka.input_topic == "from-file"
    assert from_file.cloudflare.account_id == ACCOUNT
    assert from_file.cloudflare.budget_calls == 600

    monkeypatch.setenv("ENRICH_KAFKA__INPUT_TOPIC", "from-env")
    both = load_settings(path)
    assert both.kafka.input_topic == "from-env"  # env beats file
    assert both.kafka.output_topic == "out-file"  # the rest of the file still applies
    assert both.cloudflare.budget_calls == 600

    overridden = load_settings(path, kafka={"input_topic": "from-arg"})
    assert overridden.kafka.input_topic == "from-arg"


def test_config_file_from_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[kafka]\ngroup_id = "g-file"\n')
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    assert load_settings().kafka.group_id == "g-file"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.kafka.input_topic = "x"  # type: ignore[misc]


def test_api_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = write(tmp_path / "token", f"  {TOKEN}\n\n")
    path = write(tmp_path / "c.toml", f'[cloudflare]\napi_token_file = "{secret}"\n')
    settings = load_settings(path)
    assert settings.cloudflare.api_token is not None
    assert settings.cloudflare.api_token.get_secret_value() == TOKEN


def test_auth_key_file_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = write(tmp_path / "key", "global-key\n")
    monkeypatch.setenv("ENRICH_CLOUDFLARE__AUTH_EMAIL", "soc@example.com")
    monkeypatch.setenv("ENRICH_CLOUDFLARE__AUTH_KEY_FILE", str(secret))
    settings = load_settings()
    assert settings.cloudflare.auth_key is not None
    assert settings.cloudflare.auth_key.get_secret_value() == "global-key"


def test_unreadable_token_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    text = config_error(cloudflare={"api_token_file": str(missing)})
    assert "api_token_file" in text
    assert str(missing) in text


def assert_no_token(text: str) -> None:
    assert TOKEN not in text
    assert TOKEN[5:15] not in text


def test_token_is_never_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__API_TOKEN", TOKEN)
    settings = load_settings()
    assert settings.cloudflare.api_token is not None
    assert settings.cloudflare.api_token.get_secret_value() == TOKEN
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.cloudflare),
        str(settings.model_dump()),
    ):
        assert_no_token(text)


def test_token_from_file_is_never_shown(tmp_path: Path) -> None:
    secret = write(tmp_path / "token", TOKEN)
    settings = load_settings(cloudflare={"api_token_file": str(secret)})
    assert_no_token(repr(settings) + str(settings) + settings.model_dump_json())


@pytest.mark.parametrize(
    "bad",
    [
        {"account_id": "NOT-HEX"},
        {"timeout_s": -1},
        {"base_url": "ftp://example.com"},
        {"max_attempts": 0},
    ],
)
def test_token_not_in_config_error(monkeypatch: pytest.MonkeyPatch, bad: dict[str, object]) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__API_TOKEN", TOKEN)
    assert_no_token(config_error(cloudflare=bad))


def test_credentials_in_base_url_are_refused_without_being_shown() -> None:
    text = config_error(cloudflare={"base_url": "https://soc:hunter2@proxy.example/client/v4"})
    assert "must not carry credentials" in text
    assert "hunter2" not in text


def test_token_not_in_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f'[cloudflare]\napi_token = "{TOKEN}"\nbroken = \n')
    text = config_error(path)
    assert str(path) in text
    assert_no_token(text)


def test_invalid_account_id_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__ACCOUNT_ID", "023E105F")
    text = config_error()
    assert "account_id" in text
    assert "32 lowercase hex" in text


def test_invalid_account_id_names_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__ACCOUNT_ID", "023E105F")
    assert "ENRICH_CLOUDFLARE__ACCOUNT_ID" in config_error()


def test_account_id_with_trailing_newline_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__ACCOUNT_ID", ACCOUNT + "\n")
    config_error()


def test_field_error_names_env_var_and_file_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[cloudflare]\nmax_in_flight = 0\n")
    text = config_error(path)
    assert "ENRICH_CLOUDFLARE__MAX_IN_FLIGHT" in text
    assert f"cloudflare.max_in_flight in {path}" in text


@pytest.mark.parametrize(
    "toml",
    ["bogus = 1\n", "[kafka]\ninput_topicz = 'x'\n", "[cloudflare]\napi_tokn = 'x'\n"],
)
def test_unknown_key_in_file_is_rejected(tmp_path: Path, toml: str) -> None:
    text = config_error(write(tmp_path / "c.toml", toml))
    assert "Extra inputs are not permitted" in text


def test_unknown_enrich_env_var_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_SOMETHING_ELSE", "1")
    assert isinstance(load_settings(), Settings)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    text = config_error(missing)
    assert str(missing) in text
    assert "does not exist" in text


def test_missing_config_file_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "nope.toml"))
    assert CONFIG_FILE_ENV in config_error()


def test_require_credentials_without_any() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError, match="ENRICH_CLOUDFLARE__API_TOKEN"):
        settings.cloudflare.require_credentials()


def test_require_credentials_with_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__API_TOKEN", TOKEN)
    load_settings().cloudflare.require_credentials()


def test_require_credentials_with_legacy_pair() -> None:
    settings = load_settings(cloudflare={"auth_email": "soc@example.com", "auth_key": "k"})
    settings.cloudflare.require_credentials()


@pytest.mark.parametrize("half", [{"auth_email": "soc@example.com"}, {"auth_key": "k"}])
def test_half_a_legacy_pair_is_rejected(half: dict[str, str]) -> None:
    assert "auth_email and auth_key must be set together" in config_error(cloudflare=half)


@pytest.mark.parametrize("secret", ["SECRÉTTOKEN42", "tok en", "tok\x07en"])
def test_a_token_that_cannot_be_an_http_header_stops_at_start(tmp_path: Path, secret: str) -> None:
    # Found by a new user: a non-ASCII token passed the settings and then sent every
    # message to the DLQ as internal_error (httpx cannot encode the header).
    path = tmp_path / "token"
    path.write_text(secret, encoding="utf-8")
    text = config_error(cloudflare={"api_token_file": str(path)})
    assert "non-ASCII" in text
    assert secret not in text


def test_a_bad_token_file_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("two words\n", encoding="utf-8")
    text = config_error(cloudflare={"api_token_file": str(path)})
    assert f"api_token_file {path}" in text
    assert "whitespace" in text


def test_a_token_and_a_token_file_together_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "token", TOKEN)
    text = config_error(cloudflare={"api_token_file": str(path), "api_token": "other" * 8})
    assert "api_token or api_token_file, not both" in text
    assert_no_token(text)


def test_a_legacy_email_that_cannot_be_an_http_header_stops_at_start() -> None:
    text = config_error(cloudflare={"auth_email": "søc@example.com", "auth_key": "k" * 37})
    assert "auth_email" in text
    assert "ASCII" in text


def test_producer_batch_size_comes_from_the_setting_and_stays_under_the_broker_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.kafka import build_producer

    monkeypatch.setenv("ENRICH_KAFKA__MAX_BATCH_BYTES", "65536")
    settings = load_settings()

    async def batch_size() -> int:  # aiokafka clients are built inside a running loop
        producer = build_producer(settings.kafka)
        size: int = producer._message_accumulator._batch_size
        await producer.stop()
        return size

    assert asyncio.run(batch_size()) == 65536
    # Kafka's default max.message.bytes is 1,048,588: a default batch must fit in it.
    assert Settings().kafka.max_batch_bytes < 1_048_588
    monkeypatch.setenv("ENRICH_KAFKA__MAX_BATCH_BYTES", "2000000")
    with pytest.raises(ConfigError, match="MAX_BATCH_BYTES"):
        load_settings()


def test_the_consumer_fetch_does_not_hold_a_resumed_partition_half_a_second() -> None:
    from worker.kafka import build_consumer

    async def fetch_wait_ms() -> int:  # aiokafka clients are built inside a running loop
        consumer = build_consumer(Settings().kafka)
        wait: int = consumer._fetch_max_wait_ms
        await consumer.stop()
        return wait

    assert asyncio.run(fetch_wait_ms()) <= 100
