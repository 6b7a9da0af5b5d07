"""The README, config examples and docs say what the code does."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from worker import errors
from worker.events import event_id
from worker.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def _settings_fields() -> list[tuple[str, str, object]]:
    fields = []
    for section, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        for name, field in model.model_fields.items():
            fields.append((section, name, field.default))
    return fields


@pytest.mark.parametrize(("section", "name", "default"), _settings_fields())
def test_every_setting_is_in_the_readme_table_with_its_default(
    section: str, name: str, default: object
) -> None:
    readme = (ROOT / "README.md").read_text()
    env = f"ENRICH_{section.upper()}__{name.upper()}"
    row = next((line for line in readme.splitlines() if f"| `{section}.{name}` |" in line), None)
    assert row is not None, f"{section}.{name} missing from the README's configuration table"
    assert f"`{env}`" in row
    shown = "none" if default is None else str(default).lower()
    assert f"| `{shown}` |" in row.lower() or f"| {shown} |" in row.lower(), row


@pytest.mark.parametrize(("section", "name", "default"), _settings_fields())
def test_every_setting_is_in_the_example_config(section: str, name: str, default: object) -> None:
    text = (ROOT / "config/example.toml").read_text()
    body = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    assert re.search(rf"^#? ?{name} = ", body, re.MULTILINE), f"{section}.{name} not in example"


@pytest.mark.parametrize("name", ["example.toml", "local.toml"])
def test_config_examples_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ENRICH_"):
            monkeypatch.delenv(key)
    settings = load_settings(ROOT / "config" / name)
    assert settings.kafka.input_topic == "email-investigate-ids"


def _dlq_reasons() -> set[str]:
    reasons = set()
    for path in (ROOT / "worker").rglob("*.py"):
        reasons |= set(re.findall(r'InputError\(\s*"([a-z_]+)"', path.read_text()))
        reasons |= set(re.findall(r'_send_dlq\(\s*"([a-z_]+)"', path.read_text()))
    for value in vars(errors).values():
        is_api_error = isinstance(value, type) and issubclass(value, errors.ApiError)
        if (
            is_api_error
            and value is not errors.ApiError
            and not issubclass(value, errors.AuthError)
        ):
            reasons.add(value.reason)
    return reasons


def test_every_dlq_reason_is_documented() -> None:
    doc = (ROOT / "docs/event-schema.md").read_text()
    reasons = _dlq_reasons()
    assert {"tombstone", "invalid_id", "not_found", "retries_exhausted"} <= reasons
    missing = sorted(r for r in reasons if f"| `{r}` |" not in doc)
    assert not missing, f"DLQ reasons missing from docs/event-schema.md: {missing}"


def test_the_documented_event_id_recipe_gives_the_real_event_id() -> None:
    doc = (ROOT / "docs/event-schema.md").read_text()
    namespaces = set(re.findall(r"UUID\(\"([0-9a-f-]{36})\"\)", doc))
    assert len(namespaces) == 1, "docs/event-schema.md should give the event_id namespace once"
    account, investigate_id = "023e105f4ecef8ad9ca31a8372d0c353", "4Njp3P0STMz2c02Q-2024"
    recipe = uuid.uuid5(uuid.UUID(namespaces.pop()), f"v1/{account}/{investigate_id}")
    assert str(recipe) == event_id(account, investigate_id)
