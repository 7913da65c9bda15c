"""The resident runner: `nexus-bedrock` flow commands forked from a pre-imported process.

One stack (Prefect on SQLite, emulator, local Nexus, resident runner) is started for the
module; each test compares what the launcher does through the runner with what the same
command does in-process (``NEXUS_BEDROCK_RESIDENT=0``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexus_bedrock_tasks import launcher
from nexus_bedrock_tasks.local import resident as resident_module
from nexus_bedrock_tasks.local.stack import (
    ServiceRecord,
    is_ours,
    load_records,
    resident_socket_path,
    stop_service,
)
from tests.local_stack.helpers import CliRun, free_port

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "deployments" / "agents.yaml"
DEMO_TOOLS = ROOT / "deployments" / "demo_tools.py"
PROBE_TOOLS = Path(__file__).with_name("probe_tools.py")
SMOKE = ROOT / "deployments" / "datasets" / "smoke.jsonl"
DEMO = ["--agent-id", "DEMO000001", "--alias-id", "TSTALIASID"]
SESSION = ["session", *DEMO, "--json", "Hi", "What did I ask?"]
QUESTION = "What's the weather in Paris tomorrow?"
BAD_AGENT = ["invoke", "--agent-id", "bad id", "--alias-id", "TSTALIASID", "hi"]
_LEAKING = ("PREFECT_", "AWS_", "NEXUS_", "XDG_")


@dataclass(frozen=True)
class Stack:
    """The module's running stack.

    Attributes:
        env: the environment of a user's shell with the stack up (only its data dir set).
        records: what `local up` recorded, by service.
    """

    env: dict[str, str]
    records: dict[str, ServiceRecord]

    @property
    def resident_pid(self) -> int:
        return self.records["resident"].pid

    @property
    def resident_log(self) -> Path:
        return Path(self.env["XDG_DATA_HOME"]) / "nexus-bedrock/stack/logs/resident.log"

    def children_logged(self, command: str = "invoke") -> list[str]:
        """The runner's log lines that announce a child forked for `command`."""
        lines = self.resident_log.read_text().splitlines()
        return [line for line in lines if line.endswith(f": {command}")]

    def refusals_logged(self, reason: str) -> int:
        """How many requests the runner refused for `reason` (``stale``, ``interpreter``...)."""
        return self.resident_log.read_text().count(f": {reason}\n")


def entry_point() -> list[str]:
    """The console script a user runs (the launcher), or the launcher module."""
    script = Path(sys.executable).with_name("nexus-bedrock")
    return [str(script)] if script.exists() else [sys.executable, "-m", launcher.__name__]


def run(
    stack: Stack,
    *args: str,
    resident: bool = True,
    extra: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, **(extra or {})}
    if not resident:
        env[launcher.DISABLE_ENV] = "0"
    return subprocess.run(
        [*entry_point(), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("resident")
    env = {key: value for key, value in os.environ.items() if not key.startswith(_LEAKING)}
    env.update(
        {
            "XDG_DATA_HOME": str(home / "data"),
            "PREFECT_PROFILES_PATH": str(home / "no-profiles.toml"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
    )
    ports = [f"--{name}-port={free_port()}" for name in ("prefect", "bedrock", "nexus")]
    local = [sys.executable, "-m", "nexus_bedrock_tasks.cli", "local"]
    up = subprocess.run(
        [*local, "up", "--agents", str(AGENTS), *ports],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    state = home / "data" / "nexus-bedrock" / "stack" / "state.json"
    services = json.loads(state.read_text())["services"] if state.exists() else {}
    records = {name: ServiceRecord(**fields) for name, fields in services.items()}
    try:
        assert up.returncode == 0, up.stderr
        yield Stack(env, records)
    finally:
        subprocess.run([*local, "down"], env=env, capture_output=True, timeout=120)
        for record in records.values():
            stop_service(record, timeout=5)


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _one_json_object(stdout: str) -> dict[str, Any]:
    """Stdout that is exactly one JSON object on one line (`json.loads` rejects any more)."""
    assert stdout.count("\n") == 1 and stdout.endswith("\n"), stdout
    result = json.loads(stdout)
    assert isinstance(result, dict)
    return result


@pytest.mark.slow
def test_invoke_runs_in_the_runner_and_answers_as_in_process(stack: Stack) -> None:
    args = ["invoke", "--json", *DEMO, "--tools", str(DEMO_TOOLS), QUESTION]
    verbose = run(stack, *args, "--verbose")
    assert f"runner: the resident runner (pid {stack.resident_pid})" in verbose.stderr
    via_runner = run(stack, *args)
    in_process = run(stack, *args, resident=False)
    ours, theirs = _result(via_runner), _result(in_process)
    assert set(ours) == set(theirs)
    for key in ("text", "finish_reason", "usage", "counts", "error"):
        assert ours[key] == theirs[key], key
    assert "Forecast for Paris: light rain" in ours["text"]
    assert ours["session_id"] != theirs["session_id"] and ours["trace_id"]
    assert _steady(via_runner.stderr) == _steady(in_process.stderr)
    in_process_verbose = run(stack, *args, "--verbose", resident=False)
    assert "runner: this process" in in_process_verbose.stderr


@pytest.mark.slow
def test_bad_input_is_the_same_one_line_and_exit_2(stack: Stack) -> None:
    before = len(stack.children_logged())
    via_runner = run(stack, *BAD_AGENT)
    assert len(stack.children_logged()) == before + 1
    in_process = run(stack, *BAD_AGENT, resident=False)
    assert len(stack.children_logged()) == before + 1  # NEXUS_BEDROCK_RESIDENT=0: not used
    assert via_runner.returncode == in_process.returncode == 2
    assert via_runner.stdout == in_process.stdout == ""
    assert via_runner.stderr == in_process.stderr
    lines = via_runner.stderr.strip().splitlines()
    assert len(lines) == 1 and "agent_id 'bad id'" in lines[0]


@pytest.mark.slow
def test_session_runs_in_the_runner_and_answers_as_in_process(stack: Stack) -> None:
    from flows.agent_session import SessionTranscript

    before = len(stack.children_logged("session"))
    via_runner = run(stack, *SESSION)
    assert len(stack.children_logged("session")) == before + 1
    in_process = run(stack, *SESSION, resident=False)
    assert len(stack.children_logged("session")) == before + 1
    assert via_runner.returncode == in_process.returncode == 0, via_runner.stderr
    ours, theirs = _one_json_object(via_runner.stdout), _one_json_object(in_process.stdout)
    assert set(ours) == set(theirs) == set(SessionTranscript.model_fields)
    assert [turn["prompt"] for turn in ours["turns"]] == ["Hi", "What did I ask?"]
    assert [turn["text"] for turn in ours["turns"]] == [turn["text"] for turn in theirs["turns"]]
    assert ours["session_ended"] == theirs["session_ended"]
    assert ours["session_id"] != theirs["session_id"]
    assert _steady(via_runner.stderr) == _steady(in_process.stderr)


@pytest.mark.slow
def test_eval_runs_in_the_runner_and_writes_results_in_the_callers_cwd(
    stack: Stack, tmp_path: Path
) -> None:
    from nexus_bedrock_tasks.evaluation.report import CLI_JSON_KEYS

    args = ["eval", str(SMOKE), *DEMO, "--tools", str(DEMO_TOOLS), "--json"]
    runs = {}
    for resident in (True, False):
        cwd = tmp_path / ("runner" if resident else "in-process")
        cwd.mkdir()
        before = len(stack.children_logged("eval"))
        runs[resident] = run(stack, *args, "--out", "results.jsonl", resident=resident, cwd=cwd)
        assert len(stack.children_logged("eval")) == before + resident
        assert "results: results.jsonl" in runs[resident].stderr.splitlines()
        # A relative --out: the child wrote it where its caller runs, not where the runner does.
        summary = _one_json_object(runs[resident].stdout)
        assert len((cwd / "results.jsonl").read_text().splitlines()) == summary["cases"] > 0
    via_runner, in_process = runs[True], runs[False]
    assert via_runner.returncode == in_process.returncode == 0, via_runner.stderr
    ours, theirs = _one_json_object(via_runner.stdout), _one_json_object(in_process.stdout)
    assert list(ours) == list(theirs) == list(CLI_JSON_KEYS)
    for key in ("cases", "passed", "pass_rate", "input_tokens", "output_tokens", "cost_usd"):
        assert ours[key] == theirs[key], key


@pytest.mark.slow
def test_eval_of_a_missing_dataset_is_the_same_one_line_and_exit_2(
    stack: Stack, tmp_path: Path
) -> None:
    args = ["eval", "no-such-cases.jsonl", *DEMO, "--json"]
    before = len(stack.children_logged("eval"))
    via_runner = run(stack, *args, cwd=tmp_path)
    assert len(stack.children_logged("eval")) == before + 1
    in_process = run(stack, *args, resident=False, cwd=tmp_path)
    assert via_runner.returncode == in_process.returncode == 2
    assert via_runner.stdout == in_process.stdout == ""
    assert via_runner.stderr == in_process.stderr
    lines = via_runner.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-cases.jsonl" in lines[0]


@pytest.mark.slow
def test_the_callers_warning_options_apply_in_the_child(stack: Stack, tmp_path: Path) -> None:
    args = ["invoke", "--json", *DEMO, "--tools", str(PROBE_TOOLS), QUESTION]
    options = "ignore::UserWarning,default::DeprecationWarning"
    reports = {}
    for name, resident, warning_options in (
        ("runner's own", True, None),
        ("via runner", True, options),
        ("in-process", False, options),
    ):
        probe = tmp_path / f"{name}.json"
        extra = {"PROBE_FILE": str(probe)}
        if warning_options is not None:
            extra["PYTHONWARNINGS"] = warning_options
        assert _result(run(stack, *args, resident=resident, extra=extra))["text"]
        reports[name] = json.loads(probe.read_text())
    assert reports["runner's own"]["forked_from"] == reports["via runner"]["forked_from"]
    assert reports["via runner"]["forked_from"] == stack.resident_pid
    assert reports["in-process"]["forked_from"] is None
    # Without options the child keeps the interpreter's defaults...
    assert reports["runner's own"]["warnoptions"] == []
    assert reports["runner's own"]["user_warning"] == "shown"
    assert reports["runner's own"]["deprecation_warning"] == "ignored"
    # ...with them it filters as the same command run in-process does.
    for key in ("warnoptions", "user_warning", "deprecation_warning"):
        assert reports["via runner"][key] == reports["in-process"][key], key
    assert reports["via runner"]["warnoptions"] == options.split(",")
    assert reports["via runner"]["user_warning"] == "ignored"
    assert reports["via runner"]["deprecation_warning"] == "shown"


@pytest.mark.slow
@pytest.mark.parametrize("hash_seed", ["0", "1234"])
def test_a_caller_whose_interpreter_started_otherwise_runs_in_process(
    stack: Stack, hash_seed: str
) -> None:
    # A fixed hash seed is fixed at start-up: a forked child would hash with the runner's.
    children, refusals = len(stack.children_logged()), stack.refusals_logged("interpreter")
    done = run(stack, *BAD_AGENT, extra={"PYTHONHASHSEED": hash_seed})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "agent_id 'bad id'" in lines[0]
    assert len(stack.children_logged()) == children
    assert stack.refusals_logged("interpreter") == refusals + 1


@pytest.mark.slow
def test_the_callers_environment_cwd_and_prefect_settings_reach_the_child(
    stack: Stack, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.json"
    api_url = stack.records["prefect"].url + "/api"
    caller = {
        "PROBE_FILE": str(probe),
        "NEXUS_AGENT_ID": "probe-agent",
        # The runner itself has neither (`local up` strips PREFECT_* from its environment).
        "PREFECT_API_URL": api_url,
        "PREFECT_CLIENT_MAX_RETRIES": "7",
    }
    done = run(
        stack,
        "invoke",
        "--json",
        *DEMO,
        "--tools",
        str(PROBE_TOOLS),
        QUESTION,
        extra=caller,
        cwd=tmp_path,
    )
    assert _result(done)["finish_reason"] == "end_turn"
    report = json.loads(probe.read_text())
    assert report["forked_from"] == stack.resident_pid
    assert report["cwd"] == str(tmp_path)
    assert report["nexus_agent_id"] == "probe-agent"
    assert report["prefect_api_url"] == api_url
    assert report["prefect_client_max_retries"] == 7


@pytest.mark.slow
def test_ctrl_c_reaches_the_child_and_ends_the_launcher_as_in_process(
    stack: Stack, tmp_path: Path
) -> None:
    outcomes = []
    for resident in (True, False):
        probe = tmp_path / f"probe-{resident}.json"
        env = {**stack.env, "PROBE_FILE": str(probe), "PROBE_SLEEP_S": "2"}
        if not resident:
            env[launcher.DISABLE_ENV] = "0"
        args = ["invoke", *DEMO, "--tools", str(PROBE_TOOLS), QUESTION]
        process = subprocess.Popen(
            [*entry_point(), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not probe.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        report = json.loads(probe.read_text())
        assert (report["forked_from"] is not None) is resident
        assert _gone(report["pid"])
        # The last line is Prefect's, e.g. "<time> | ERROR | Flow run '<name>' - Finished
        # in state Crashed(...)": compare it without the time and the run's name.
        last = stderr.strip().splitlines()[-1]
        outcomes.append((process.returncode, last.rsplit(" - ", 1)[-1]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == 128 + signal.SIGINT


@pytest.mark.slow
def test_concurrent_calls_fork_one_child_each_and_leave_no_zombie(stack: Stack) -> None:
    before = set(stack.children_logged())
    processes = [
        subprocess.Popen(
            [*entry_point(), *BAD_AGENT],
            env=stack.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(process.wait(timeout=60), process.stderr) for process in processes]
    for code, stderr in outcomes:
        assert code == 2
        assert stderr is not None and "agent_id 'bad id'" in stderr.read()
        stderr.close()
    new = set(stack.children_logged()) - before
    assert len({line.split("child ")[1] for line in new}) == 4
    deadline = time.monotonic() + 10
    while _zombie_children(stack.resident_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _zombie_children(stack.resident_pid) == []


@pytest.mark.slow
def test_changed_code_is_refused_with_a_restart_hint(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", stack.env["XDG_DATA_HOME"])
    socket_path = str(resident_socket_path())
    assert resident_module.runs_older_code(socket_path) is False
    # A launcher that finds other code installed than the runner imported.
    code = (
        "import sys\n"
        "from nexus_bedrock_tasks import launcher\n"
        "launcher.code_fingerprint = lambda: '0' * 40\n"
        f"sys.argv = ['nexus-bedrock', *{BAD_AGENT!r}]\n"
        "launcher.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=stack.env, capture_output=True, text=True, timeout=120
    )
    log = stack.resident_log.read_text()
    assert done.returncode == 2, log[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[0] == launcher.RESTART_HINT, log[-2000:]
    assert len(lines) == 2 and "agent_id 'bad id'" in lines[1]
    assert "refused ['invoke']: stale" in log
    monkeypatch.setattr(resident_module, "code_fingerprint", lambda: "0" * 40)
    assert resident_module.runs_older_code(socket_path) is True


def test_an_absent_or_stale_socket_runs_in_process(
    stack_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = launcher.socket_path()
    assert path == str(resident_socket_path())
    assert launcher.run_in_resident(["nexus-bedrock", *BAD_AGENT]) is None
    stack_home.mkdir(parents=True)
    # A socket file nobody listens on: what a runner killed by SIGKILL leaves behind.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        monkeypatch.chdir(stack_home)  # a short relative name: tmp paths overflow sun_path
        dead.bind(launcher.SOCKET_NAME)
    assert Path(path).exists()
    assert launcher.run_in_resident(["nexus-bedrock", *BAD_AGENT]) is None
    assert capsys.readouterr().err == ""
    done = subprocess.run(
        [*entry_point(), *BAD_AGENT, "--verbose"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: agent_id 'bad id' is malformed")


def test_a_refusal_sent_as_soon_as_the_request_is_read_reaches_the_launcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    launcher_end, runner_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    send_fds = socket.send_fds

    def runner_answers_at_once(sock: socket.socket, buffers: list[bytes], fds: list[int]) -> int:
        sent = send_fds(sock, buffers, fds)
        # The runner reads the whole request, refuses it and closes, all before the
        # launcher's next system call.
        _, received = launcher.recv_message(runner_end, max_fds=3)
        for fd in received:
            os.close(fd)
        launcher.send_message(runner_end, {"refused": "stale"})
        runner_end.close()
        return sent

    monkeypatch.setattr(socket, "send_fds", runner_answers_at_once)
    with launcher_end:
        launcher.send_message(launcher_end, {"protocol": launcher.PROTOCOL}, fds=(0, 1, 2))
        assert launcher.recv_message(launcher_end) == ({"refused": "stale"}, [])


def test_the_launcher_chooses_the_runner_only_for_flow_commands() -> None:
    environ = {"HOME": "/nowhere"}
    assert launcher.wants_resident(["invoke", "--help"], environ)
    assert launcher.wants_resident(["eval", "cases.jsonl"], environ)
    assert launcher.wants_resident(["session", "x"], environ)
    assert not launcher.wants_resident(["inspect", "body.bin"], environ)
    assert not launcher.wants_resident(["local", "status"], environ)
    assert not launcher.wants_resident([], environ)
    assert not launcher.wants_resident(["invoke"], {launcher.DISABLE_ENV: "0"})


@pytest.mark.parametrize(
    ("runner_options", "caller_options"),
    [
        (["error::UserWarning"], []),
        ([], ["default::DeprecationWarning", "ignore:lib:RuntimeWarning"]),
    ],
)
def test_a_childs_warning_filters_are_those_its_callers_interpreter_would_set(
    runner_options: list[str], caller_options: list[str]
) -> None:
    # Filters a library adds at import, after the interpreter's: in front and behind.
    libraries = (
        "import sys, warnings\n"
        "warnings.filterwarnings('ignore', 'lib', UserWarning)\n"
        "warnings.simplefilter('always', BytesWarning, append=True)\n"
    )
    report = "print(repr(warnings.filters), sys.warnoptions)\n"
    child = (
        "from nexus_bedrock_tasks.local import resident_child\n"
        + libraries
        + f"resident_child.apply_warning_options({caller_options!r})\n"
        + report
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    outputs = []
    for options, code in ((runner_options, child), (caller_options, libraries + report)):
        flags = [f"-W{option}" for option in options]
        done = subprocess.run(
            [sys.executable, *flags, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert str(caller_options) in outputs[0]


def test_the_launcher_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import nexus_bedrock_tasks.launcher\n"
        "heavy = ('typer', 'click', 'rich', 'prefect', 'boto3', 'botocore', 'httpx', 'pydantic')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_up_starts_reuses_and_down_stops_the_runner(local_cli: CliRun) -> None:
    first = local_cli("up", "--only", "resident")
    assert first.returncode == 0, first.stderr
    path = resident_socket_path()
    assert f"started resident unix:{path}" in first.stdout
    record = load_records()["resident"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
    report = json.loads(local_cli("status", "--json").stdout)["resident"]
    assert report["healthy"] and report["pid"] == record.pid and report["url"] == f"unix:{path}"

    again = local_cli("up", "--only", "resident")
    assert again.returncode == 0, again.stderr
    assert "reused  resident" in again.stdout
    assert load_records()["resident"].pid == record.pid

    down = local_cli("down")
    assert down.returncode == 0, down.stderr
    assert f"stopped  resident (pid {record.pid})" in down.stdout
    assert not is_ours(record) and not path.exists()


def _steady(stderr: str) -> list[str]:
    """Stderr without Prefect's exit-time notice of a slow events flush (load-dependent)."""
    return [line for line in stderr.splitlines() if "EventsWorker - Still processing" not in line]


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def _zombie_children(parent: int) -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == parent:
            zombies.append(int(entry.name))
    return zombies
