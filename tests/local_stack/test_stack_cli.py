"""`nexus-bedrock local up|status|down|env` with real emulator and local Nexus processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nexus_bedrock_tasks.local.stack import (
    ServiceRecord,
    is_ours,
    load_records,
    pid_path,
    process_identity,
    ps_identity,
    save_records,
    start_service,
    stop_service,
)
from tests.local_stack.helpers import CliRun, free_port, port_is_open


def _up(local_cli: CliRun, bedrock: int, nexus: int) -> subprocess.CompletedProcess[str]:
    return local_cli(
        "up", "--only", "bedrock,nexus", "--bedrock-port", str(bedrock), "--nexus-port", str(nexus)
    )


def _status(local_cli: CliRun) -> tuple[int, dict[str, dict[str, object]]]:
    result = local_cli("status", "--json")
    return result.returncode, json.loads(result.stdout)


def test_up_status_env_and_down_are_idempotent(local_cli: CliRun) -> None:
    bedrock, nexus = free_port(), free_port()
    first = _up(local_cli, bedrock, nexus)
    assert first.returncode == 0, first.stderr
    assert f"started bedrock  http://127.0.0.1:{bedrock}" in first.stdout
    assert f"export NEXUS_BASE_URL=http://127.0.0.1:{nexus}" in first.stdout
    pids = {name: record.pid for name, record in load_records().items()}
    assert set(pids) == {"bedrock", "nexus"}
    assert pid_path("bedrock").read_text().strip() == str(pids["bedrock"])

    code, report = _status(local_cli)
    assert code == 0
    assert report["bedrock"] == {
        "running": True,
        "healthy": True,
        "url": f"http://127.0.0.1:{bedrock}",
        "pid": pids["bedrock"],
        "log": report["bedrock"]["log"],
    }
    assert report["prefect"]["running"] is False
    assert Path(str(report["nexus"]["log"])).read_text().strip()

    second = _up(local_cli, bedrock, nexus)
    assert second.returncode == 0, second.stderr
    assert "started" not in second.stdout
    assert second.stdout.count("reused") == 2
    assert {name: record.pid for name, record in load_records().items()} == pids

    exports = local_cli("env").stdout.splitlines()
    assert f"export AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME=http://127.0.0.1:{bedrock}" in exports
    assert "export NEXUS_API_KEY=nxs_local_dev_key" in exports
    assert not any("PREFECT_API_URL" in line for line in exports)

    records = load_records()
    down = local_cli("down")
    assert down.returncode == 0, down.stderr
    assert "stopped  bedrock" in down.stdout and "stopped  nexus" in down.stdout
    assert not any(is_ours(record) for record in records.values())
    assert not port_is_open(bedrock) and not port_is_open(nexus)
    assert load_records() == {} and not pid_path("nexus").exists()
    assert _status(local_cli)[0] == 1

    again = local_cli("down")
    assert again.returncode == 0
    assert "nothing to stop" in again.stdout
    assert local_cli("env").returncode == 1


def test_a_taken_port_is_one_clear_error_and_starts_nothing(local_cli: CliRun) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = local_cli(
            "up",
            "--only",
            "bedrock,nexus",
            "--bedrock-port",
            str(free_port()),
            "--nexus-port",
            str(port),
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} (nexus) is already in use by another process: "
        "stop it or choose another port with --nexus-port"
    ]
    assert load_records() == {}


def test_stale_records_are_forgotten_and_their_pids_never_signalled(
    local_cli: CliRun, unrelated_process: subprocess.Popen[bytes]
) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    assert finished.wait() == 0
    identity = process_identity(unrelated_process.pid)
    assert identity is not None
    # The unrelated process's real command line, but not its start time: a recycled pid.
    recycled = ServiceRecord(
        "nexus",
        unrelated_process.pid,
        "127.0.0.1",
        free_port(),
        identity[1].split(" "),
        "1",
        0.0,
    )
    gone = ServiceRecord("bedrock", finished.pid, "127.0.0.1", free_port(), ["x"], "1", 0.0)
    save_records({"bedrock": gone, "nexus": recycled})

    code, report = _status(local_cli)
    assert code == 1
    assert report["nexus"]["running"] is False and report["nexus"]["pid"] is None

    down = local_cli("down")
    assert down.returncode == 0, down.stderr
    assert f"stale    nexus: pid {unrelated_process.pid} is not ours" in down.stdout
    assert unrelated_process.poll() is None
    assert load_records() == {} and not pid_path("nexus").exists()


def test_a_pid_file_without_a_record_is_removed_not_followed(
    local_cli: CliRun, stack_home: Path, unrelated_process: subprocess.Popen[bytes]
) -> None:
    stack_home.mkdir(parents=True)
    pid_path("prefect").write_text(f"{unrelated_process.pid}\n")
    down = local_cli("down")
    assert down.returncode == 0, down.stderr
    assert "nothing to stop" in down.stdout
    assert unrelated_process.poll() is None
    assert not pid_path("prefect").exists()


def test_up_replaces_a_stale_record(local_cli: CliRun) -> None:
    bedrock = free_port()
    save_records(
        {"bedrock": ServiceRecord("bedrock", 2**22 + 7, "127.0.0.1", bedrock, ["x"], "1", 0.0)}
    )
    result = local_cli("up", "--only", "bedrock", "--bedrock-port", str(bedrock))
    assert result.returncode == 0, result.stderr
    assert f"started bedrock  http://127.0.0.1:{bedrock}" in result.stdout
    record = load_records()["bedrock"]
    assert record.pid != 2**22 + 7 and is_ours(record)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(stack_home: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    record = start_service(
        "bedrock",
        [sys.executable, "-c", stubborn],
        host="127.0.0.1",
        port=free_port(),
        env={},
    )
    save_records({"bedrock": record})
    assert stop_service(record, timeout=0.5) is True
    assert not is_ours(record)
    assert stop_service(record, timeout=0.5) is False


def test_a_service_that_dies_at_start_is_reported_with_its_log(
    local_cli: CliRun, tmp_path: Path
) -> None:
    bad_agents = tmp_path / "agents.yaml"
    bad_agents.write_text("agents: [{id: '!!', name: x}]\n")
    result = local_cli(
        "up",
        "--only",
        "bedrock",
        "--bedrock-port",
        str(free_port()),
        "--agents",
        str(bad_agents),
        "--timeout",
        "30",
    )
    assert result.returncode == 1
    assert "bedrock exited" in result.stderr and "agents.yaml" in result.stderr
    assert load_records() == {}


@pytest.mark.parametrize("args", [["--help"], ["local", "status", "--json"], ["local", "env"]])
def test_fast_paths_do_not_import_prefect_or_servers(
    args: list[str], stack_home: Path, fake_prefect: Callable[[bool], ServiceRecord]
) -> None:
    fake_prefect(True)
    code = (
        "import sys\n"
        "from nexus_bedrock_tasks.cli import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('prefect', 'uvicorn', 'fastapi', 'boto3', 'httpx')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines()[-1] == "[]"


def test_up_rejects_an_unknown_service(local_cli: CliRun) -> None:
    result = local_cli("up", "--only", "bedrock,redis")
    assert result.returncode == 2
    assert "--only" in result.stderr


def test_ps_gives_the_same_command_line_as_proc(
    unrelated_process: subprocess.Popen[bytes],
) -> None:
    from_proc = process_identity(unrelated_process.pid)
    from_ps = ps_identity(unrelated_process.pid)
    assert from_proc is not None and from_ps is not None
    assert from_ps[1] == from_proc[1]
    unrelated_process.kill()
    unrelated_process.wait()
    assert ps_identity(unrelated_process.pid) is None


def test_two_services_on_one_port_is_a_usage_error(local_cli: CliRun) -> None:
    port = str(free_port())
    result = local_cli(
        "up", "--only", "bedrock,nexus", "--bedrock-port", port, "--nexus-port", port
    )
    assert result.returncode == 2
    assert f"bedrock and nexus cannot share port {port}" in result.stderr
    assert load_records() == {}
