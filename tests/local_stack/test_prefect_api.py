"""`choose_prefect_api`: PREFECT_API_URL, then the local stack, then ephemeral with a hint."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nexus_bedrock_tasks.local.prefect_api import EPHEMERAL_HINT, choose_prefect_api
from nexus_bedrock_tasks.local.stack import ServiceRecord, stack_environment, stop_service


def test_an_api_url_in_the_environment_wins_over_the_stack(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_prefect: Callable[[bool], ServiceRecord],
) -> None:
    fake_prefect(True)
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    assert choose_prefect_api(verbose=False) == "env"
    assert os.environ["PREFECT_API_URL"] == "http://prefect.example:4200/api"
    assert capsys.readouterr().err == ""
    assert choose_prefect_api(verbose=True) == "env"
    assert "http://prefect.example:4200/api (PREFECT_API_URL from the environment)" in (
        capsys.readouterr().err
    )


def test_an_api_url_in_the_active_prefect_profile_counts_as_set(
    stack_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        'active = "work"\n[profiles.work]\nPREFECT_API_URL = "http://prefect.example:4200/api"\n'
    )
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    assert choose_prefect_api(verbose=False) == "env"
    assert "PREFECT_API_URL" not in os.environ


def test_without_api_or_stack_it_is_ephemeral_with_a_one_line_hint(
    stack_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert choose_prefect_api(verbose=False) == "ephemeral"
    assert capsys.readouterr().err == EPHEMERAL_HINT + "\n"
    assert "nexus-bedrock local up" in EPHEMERAL_HINT
    assert "PREFECT_API_URL" not in os.environ
    assert choose_prefect_api(verbose=True) == "ephemeral"
    assert "prefect api: ephemeral" in capsys.readouterr().err


def test_a_stack_server_that_does_not_answer_or_has_stopped_is_not_used(
    fake_prefect: Callable[[bool], ServiceRecord],
) -> None:
    record = fake_prefect(False)
    assert choose_prefect_api(verbose=False) == "ephemeral"
    assert stop_service(record, timeout=5)
    assert choose_prefect_api(verbose=False) == "ephemeral"
    assert stack_environment() is None


def test_a_running_stack_is_used_before_prefect_is_imported(
    fake_prefect: Callable[[bool], ServiceRecord],
) -> None:
    record = fake_prefect(True)
    assert stack_environment() == {"PREFECT_API_URL": f"http://127.0.0.1:{record.port}/api"}
    # A fresh process, as a CLI command runs it: the choice must not import Prefect.
    code = (
        "import os, sys\n"
        "from nexus_bedrock_tasks.local.prefect_api import choose_prefect_api\n"
        "print(choose_prefect_api(verbose=True))\n"
        "print(os.environ['PREFECT_API_URL'])\n"
        "print('prefect' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    url = f"http://127.0.0.1:{record.port}/api"
    assert result.stdout.splitlines() == ["stack", url, "False"]
    assert f"prefect api: {url} (the local stack" in result.stderr
    assert "hint" not in result.stderr


@pytest.mark.parametrize(("verbose", "level"), [(False, 40), (True, 0)])
def test_quiet_mode_hides_prefects_exit_progress_line(
    stack_home: Path, monkeypatch: pytest.MonkeyPatch, verbose: bool, level: int
) -> None:
    import logging

    from nexus_bedrock_tasks.cli_runtime import choose_flow_api

    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    events_logger = logging.getLogger("EventsWorker")
    saved = events_logger.level
    events_logger.setLevel(logging.NOTSET)
    try:
        choose_flow_api(verbose=verbose)
        assert events_logger.level == level  # ERROR (40) when quiet, untouched otherwise
    finally:
        events_logger.setLevel(saved)
