"""Setting mistakes that used to pass silently now stop the worker with the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ENRICH_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize("token", ["", "   ", "abc def", "abc\n"])
def test_an_empty_or_malformed_token_is_refused(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__API_TOKEN", token)
    with pytest.raises(ConfigError, match="ENRICH_CLOUDFLARE__API_TOKEN"):
        load_settings()


def test_an_empty_token_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    monkeypatch.setenv("ENRICH_CLOUDFLARE__API_TOKEN_FILE", str(empty))
    with pytest.raises(ConfigError, match="empty"):
        load_settings()


@pytest.mark.parametrize("name", ["ENRICH_KAFKAA__INPUT_TOPIC", "ENRICH_KAFKA__INPUT_TOPICS"])
def test_a_misspelt_setting_in_the_environment_is_refused(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "x")
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_other_enrich_variables_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_STATE_DIR", "/tmp/x")  # used by deploy/local/kafka.sh
    assert load_settings().kafka.group_id == "enrich-worker"


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_LOG__LEVEL", "debug")
    assert load_settings().log.level == "DEBUG"


def test_a_rule_across_settings_names_the_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__AUTH_EMAIL", "soc@example.com")
    with pytest.raises(ConfigError, match=r"ENRICH_CLOUDFLARE__\*"):
        load_settings()


def test_a_base_url_without_the_api_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_CLOUDFLARE__BASE_URL", "https://api.cloudflare.com")
    with pytest.raises(ConfigError, match="/client/v4"):
        load_settings()
