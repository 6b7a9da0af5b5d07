"""``enrich-worker simulate`` flags: one per SimulatorConfig field, checked, documented."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from worker.cli import build_parser, main
from worker.simulator import FAULT_KINDS, SimulatorConfig
from worker.simulator.options import config_from_args

EVERY_FLAG = [
    "simulate",
    *("--seed", "9", "--catalog-size", "50", "--accept-any-id", "--shape-2025-ratio", "0.5"),
    *("--null-ratio", "0.3", "--extra-keys-ratio", "0.9", "--payload-variants", "16"),
    *("--unknown-status", "400", "--token", "t0k3n"),
    *("--auth-email", "soc@example.com", "--auth-key", "k3y"),
    *("--rate-limit", "20", "--rate-window-s", "2", "--lockout-s", "3"),
    "--no-ratelimit-headers",
    *("--fault", "json_503=0.1", "--fault", "reset_reused=0.05"),
    *("--fault-id", "some-id=html_522*2", "--fault-id", "a=b@example.com=timeout"),
    *("--slow-s", "5", "--x-should-retry", "false"),
    *("--latency-ms", "20", "--latency-dist", "longtail", "--latency-max-ms", "900"),
    *("--latency-sigma", "0.5", "--latency-id", "slow-id=1500"),
    *("--search-202-ratio", "0.25", "--search-pending-polls", "2"),
]


def test_every_field_has_a_flag() -> None:
    config = config_from_args(build_parser().parse_args(EVERY_FLAG))
    default = SimulatorConfig()
    unchanged = [
        f.name
        for f in dataclasses.fields(SimulatorConfig)
        if getattr(config, f.name) == getattr(default, f.name)
    ]
    assert unchanged == []
    assert config.fault_rates == {"json_503": 0.1, "reset_reused": 0.05}
    assert config.fault_by_id == {"some-id": "html_522*2", "a=b@example.com": "timeout"}
    assert config.latency_by_id == {"slow-id": 1.5}
    assert (config.latency_s, config.latency_max_s) == (0.02, 0.9)
    assert (config.rate_limit, config.rate_window_s, config.lockout_s) == (20, 2.0, 3.0)


def test_defaults_are_cloudflares() -> None:
    config = config_from_args(build_parser().parse_args(["simulate"]))
    assert config == SimulatorConfig()
    assert (config.rate_limit, config.rate_window_s, config.lockout_s) == (1200, 300.0, 300.0)


@pytest.mark.parametrize(
    "flags",
    [
        ["--fault", "json_501=0.1"],
        ["--fault", "reset"],
        ["--fault", "reset=lots"],
        ["--fault-id", "x=nope"],
        ["--fault-id", "=reset"],
        ["--latency-id", "x=slow"],
        ["--latency-dist", "gaussian"],
        ["--unknown-status", "410"],
        ["--x-should-retry", "maybe"],
    ],
)
def test_bad_flags_exit_2(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", *flags])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--fault", "reset=0.7", "--fault", "timeout=0.5"], "add up"),
        (["--null-ratio", "1.5"], "null_ratio"),
        (["--rate-window-s", "0"], "rate_window_s"),
        (["--auth-email", "a@example.com"], "auth_key"),
        (["--latency-dist", "uniform", "--latency-ms", "50", "--latency-max-ms", "10"], "max"),
    ],
)
def test_invalid_combinations_are_config_errors(
    flags: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *flags]) == 2
    assert problem in capsys.readouterr().err


def test_help_documents_every_flag_and_fault_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    for flag in {f for f in EVERY_FLAG if f.startswith("--")}:
        assert flag in text
    for group in ("payloads:", "auth:", "rate limit:", "faults:", "latency:", "search:"):
        assert group in text
    for kind in FAULT_KINDS:
        assert kind in text or kind.startswith("html_52")


def test_print_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--print-ids", "3", "--seed", "4"]) == 0
    from worker.simulator import catalog_id

    assert capsys.readouterr().out.split() == [catalog_id(4, i) for i in range(3)]


def test_readme_documents_every_flag_and_fault_kind() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## The simulator", 1)[1].split("\n## ", 1)[0]
    flags = {
        option
        for action in _simulate_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    missing = sorted(flag for flag in flags if f"`{flag}" not in section)
    assert missing == []
    assert all(
        f"`{kind}`" in section or kind in ("html_521", "html_522", "html_523")
        for kind in FAULT_KINDS
    )


def _simulate_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    simulate: argparse.ArgumentParser = sub.choices["simulate"]
    return simulate
