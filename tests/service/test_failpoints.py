"""Failpoints: a bad setting refuses the start, naming the entry; a fired count reads ``off``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import dbpatterns.patterns  # noqa: F401  (declares every failpoint)
from dbpatterns.config import Settings
from dbpatterns.service import failpoints
from dbpatterns.stack import LabError, ServiceProcess, free_port
from tests.failpoint_checks import assert_fired

TYPO = "keyed.update.aftr-commit"


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """This process's failpoint settings, forgotten before and after the test."""
    monkeypatch.delenv(failpoints.ENV_SPEC, raising=False)
    monkeypatch.delenv(failpoints.ENV_FILE, raising=False)
    failpoints.reset()
    yield monkeypatch
    monkeypatch.undo()
    failpoints.reset()


# --- the parser --------------------------------------------------------------------------------


def test_a_spec_parses_to_one_action_per_name() -> None:
    actions = failpoints.parse_spec(
        "keyed.update.after-commit=1*kill; keyed.update.before-write=50%sleep(20)\n# comment\n"
    )
    assert {name: str(action) for name, action in actions.items()} == {
        "keyed.update.after-commit": "1*kill",
        "keyed.update.before-write": "50%sleep(20)",
    }


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        (
            f"{TYPO}=1*kill",
            [repr(TYPO), "did you mean 'keyed.update.after-commit'", "chaos/README.md"],
        ),
        ("keyed.update.after-commit=1*kil", ["bad failpoint action '1*kil'", "after-commit=1*kil"]),
        ("keyed.update.after-commit=sleep", ["bad failpoint action 'sleep'"]),
        ("keyed.update.after-commit=2*pause(5)", ["bad failpoint action '2*pause(5)'"]),
        ("keyed.update.after-commit", ["expected name=action", "'keyed.update.after-commit'"]),
    ],
)
def test_a_bad_spec_is_refused_naming_the_entry(spec: str, names: list[str]) -> None:
    with pytest.raises(failpoints.FailpointSpecError) as refused:
        failpoints.parse_spec(spec)
    for name in names:
        assert name in str(refused.value)


def test_check_settings_names_the_setting_the_bad_entry_comes_from(tmp_path: Path) -> None:
    control = tmp_path / "failpoints"
    control.write_text(f"keyed.update.after-commit=off\n{TYPO}=error\n")
    settings = Settings(failpoints="", failpoints_file=control)
    with pytest.raises(failpoints.FailpointSpecError, match=r"DBPATTERNS_FAILPOINTS_FILE \(.*\)"):
        failpoints.check_settings(settings)
    with pytest.raises(failpoints.FailpointSpecError, match=r"^DBPATTERNS_FAILPOINTS: unknown"):
        failpoints.check_settings(Settings(failpoints=f"{TYPO}=1*kill"))
    failpoints.check_settings(Settings(failpoints_file=tmp_path / "missing"))  # all off: fine


# --- settings through dbpatterns.config --------------------------------------------------------


def test_the_registry_reads_the_environment_through_the_settings_and_reset_rereads_it(
    clean_registry: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert not failpoints.registry().enabled
    clean_registry.setenv(failpoints.ENV_SPEC, "keyed.update.after-commit=2*error")
    clean_registry.setenv(failpoints.ENV_FILE, str(tmp_path / "failpoints"))
    failpoints.reset()
    registry = failpoints.registry()
    assert registry.file == tmp_path / "failpoints"
    assert str(registry.env_actions["keyed.update.after-commit"]) == "2*error"


# --- a fired count -----------------------------------------------------------------------------


def test_a_counted_action_is_spent_once_it_fired_its_count(
    clean_registry: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import asyncio

    control = tmp_path / "failpoints"
    point = "keyed.update.before-write"
    control.write_text(f"{point}=2*sleep(1)\n")
    clean_registry.setenv(failpoints.ENV_FILE, str(control))
    failpoints.reset()
    fired = 0
    for _ in range(3):
        fired += not failpoints.spent(control, point)
        asyncio.run(failpoints.hit(point))
    assert fired == 2
    assert failpoints.spent(control, point)
    assert_fired(control, point)
    assert not failpoints.spent(tmp_path / "missing", point)
    assert not failpoints.spent(control, "keyed.update.after-commit")


# --- the service refuses to start --------------------------------------------------------------


def test_a_service_started_with_an_unknown_failpoint_refuses_to_start_naming_it(
    base_settings: Settings,
) -> None:
    settings = base_settings.model_copy(
        update={"service_port": free_port(), "janitor_interval": timedelta(0)}
    )
    log_path = settings.home / "logs" / "service-bad-failpoint.log"
    svc = ServiceProcess(settings, log_path, extra_env={failpoints.ENV_SPEC: f"{TYPO}=1*kill"})
    try:
        with pytest.raises(LabError, match="did not come up"):
            svc.start(timeout=60)
        assert svc.process is not None
        assert not svc.process.alive()
    finally:
        svc.stop()
    refusal = [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if "the service refuses to start" in line
    ]
    assert len(refusal) == 1, log_path.read_text(errors="replace")
    assert f"unknown failpoint '{TYPO}'" in refusal[0]
    assert failpoints.ENV_SPEC in refusal[0]
    assert "chaos/README.md" in refusal[0]
