"""The `nexus-bedrock local bedrock` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from nexus_bedrock_tasks.local.bedrock.commands import register


def test_register_adds_the_bedrock_command() -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--agents", "--replay"):
        assert option in result.output


def test_importing_the_commands_does_not_import_the_server() -> None:
    code = (
        "import sys, nexus_bedrock_tasks.local.bedrock.commands; "
        "print(any(m in sys.modules for m in ('uvicorn', 'starlette', 'fastapi')))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "False"


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nexus_bedrock_tasks.cli", "local", "bedrock", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow
def test_the_server_prints_its_url_and_stops_cleanly_on_sigterm() -> None:
    process = _cli("--port", "0")
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        url = first.rsplit(" ", 1)[-1]
        assert first.startswith("Bedrock Agent Runtime emulator listening on http://127.0.0.1:")
        assert httpx.get(url + "/_emulator/health", timeout=5).json()["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "stopped" in out


def test_a_bad_agents_file_exits_with_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "agents.yaml"
    bad.write_text("agents: [{id: '!!', name: x}]\n")
    process = _cli("--port", "0", "--agents", str(bad))
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "agents.yaml" in err
