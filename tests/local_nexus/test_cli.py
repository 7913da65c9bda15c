"""`nexus-bedrock local nexus`: flags reach the server, data persists in --db."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.local_nexus.conftest import trace_body

pytestmark = pytest.mark.slow

KEY = "nxs_cli_test_key"


@contextmanager
def cli_server(db: Path, *flags: str) -> Iterator[httpx.Client]:
    """Run the CLI command; yield a client with the key, stop it with Ctrl-C."""
    command = [sys.executable, "-m", "nexus_bedrock_tasks.cli", "local", "nexus"]
    command += ["--port", "0", "--db", str(db), "--api-key", KEY, *flags]
    with (
        (db.parent / "stderr.log").open("ab") as stderr,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as process,
    ):
        assert process.stdout is not None
        first_line = process.stdout.readline()
        assert first_line.startswith("Local Nexus on http://127.0.0.1:"), first_line
        url = first_line.split()[3]
        try:
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {KEY}"}, trust_env=False
            ) as http:
                yield http
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=15) == 128 + signal.SIGINT  # the shell's Ctrl-C code
            process.stdout.close()
    assert "Application shutdown complete." in (db.parent / "stderr.log").read_text()


def test_flags_reach_the_server_and_the_database_persists(tmp_path: Path) -> None:
    db = tmp_path / "nexus.sqlite3"
    with cli_server(db, "--faults", "--max-agents", "1") as http:
        assert http.get("/health").json() == {"status": "ok"}
        trace_id = http.post("/api/v1/traces", json=trace_body("first")).json()["trace_id"]
        assert http.post("/api/v1/traces", json=trace_body("second")).status_code == 403
        assert http.put("/_faults", json={"fail_next": 1}).status_code == 200
        assert http.get("/api/v1/traces").status_code == 503
    with cli_server(db) as http:
        assert [row["id"] for row in http.get("/api/v1/traces").json()] == [trace_id]
        assert http.get("/_faults").status_code == 404
        assert http.post("/api/v1/traces", json=trace_body("second")).status_code == 201
