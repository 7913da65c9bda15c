"""Bookkeeping of the local stack's background processes: state, identity, start and stop.

`start_service` records every process it starts in ``state.json`` (pid, port, argv and the
kernel's start time of that pid) and in a pid file per service. A pid alone proves nothing,
since the OS recycles pids: `stop_service` signals a process only while its start time and
command line still match the record, so `local down` never stops a process it did not start.
POSIX only (sessions, signals, ``/proc`` or ``ps``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from nexus_bedrock_tasks.launcher import SOCKET_NAME, ping
from nexus_bedrock_tasks.local.nexus.config import DEV_KEY
from nexus_bedrock_tasks.settings import user_data_dir

SERVICES: Final = ("prefect", "bedrock", "nexus", "resident")
"""The services a user asks for; ``postgres`` joins only as Prefect's database."""

STOP_ORDER: Final = ("resident", "prefect", "bedrock", "nexus", "postgres")
"""The resident runner first (no new flow runs), Prefect before its database."""

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORTS: Final[Mapping[str, int]] = {
    "prefect": 4200,
    "bedrock": 8766,
    "nexus": 8765,
    "postgres": 5432,
}
HEALTH_PATHS: Final[Mapping[str, str]] = {
    "prefect": "/api/health",
    "bedrock": "/_emulator/health",
    "nexus": "/health",
}
# Generous for a local probe: only a hung server makes a caller wait it out (a stopped one
# refuses at once), while wrongly falling back to ephemeral Prefect costs ~10 s.
PROBE_TIMEOUT_S: Final = 2.0
STOP_TIMEOUT_S: Final = 10.0
STATE_VERSION: Final = 1

# PostgreSQL's "fast" shutdown; its SIGTERM ("smart") would wait for every client to leave.
_STOP_SIGNALS: Final[Mapping[str, signal.Signals]] = {"postgres": signal.SIGINT}
_WILDCARD_HOSTS: Final[Mapping[str, str]] = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class StackError(Exception):
    """A stack operation that cannot go on; the message says why and what to do.

    Attributes:
        exit_code: the CLI's exit status for it (2: fix the command or the machine).
    """

    exit_code = 2


class PortTakenError(StackError):
    """A port the stack needs is already used by a process the stack did not start."""

    def __init__(self, service: str, port: int, option: str) -> None:
        super().__init__(
            f"port {port} ({service}) is already in use by another process: "
            f"stop it or choose another port with {option}"
        )
        self.service = service
        self.port = port


class ServiceStartError(StackError):
    """A service exited or stayed unhealthy while starting; its log says why."""

    exit_code = 1


@dataclass(frozen=True)
class ServiceRecord:
    """One process started by `local up`, as recorded in the state file.

    Attributes:
        name: ``prefect``, ``bedrock``, ``nexus``, ``resident`` or ``postgres``.
        pid: process id; also its process group, since it leads a new session.
        host: the interface it listens on; for the resident runner, its Unix socket.
        port: its TCP port (0 for the resident runner).
        argv: the command line it was started with.
        start_ticks: the kernel's start time of `pid` (with `argv`, its identity).
        started_at: wall-clock start, seconds since the epoch.
        database: Prefect's database, ``sqlite`` or ``postgresql``; None for the others.
    """

    name: str
    pid: int
    host: str
    port: int
    argv: list[str]
    start_ticks: str
    started_at: float
    database: str | None = None

    @property
    def url(self) -> str:
        """The root URL a client on this machine uses."""
        return client_url(self.host, self.port)


def client_url(host: str, port: int) -> str:
    """The root URL a client on this machine uses for a server listening on `host:port`."""
    host = _WILDCARD_HOSTS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def stack_dir() -> Path:
    """Where the stack keeps its state, pid files, logs and Prefect home."""
    return user_data_dir() / "stack"


def state_path() -> Path:
    """The JSON record of every process `local up` started."""
    return stack_dir() / "state.json"


def resident_socket_path() -> Path:
    """The resident runner's Unix socket (where `nexus_bedrock_tasks.launcher` looks)."""
    return stack_dir() / SOCKET_NAME


def pid_path(name: str) -> Path:
    """The pid file of one service (for people and scripts; `state.json` is authoritative)."""
    return stack_dir() / f"{name}.pid"


def log_path(name: str) -> Path:
    """The log file a service writes its stdout and stderr to."""
    return stack_dir() / "logs" / f"{name}.log"


def load_records() -> dict[str, ServiceRecord]:
    """The recorded processes; an absent or unreadable state file records none."""
    try:
        raw = json.loads(state_path().read_text())
        return {name: ServiceRecord(**fields) for name, fields in raw["services"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def save_records(records: Mapping[str, ServiceRecord]) -> None:
    """Write the state file atomically and make the pid files match it."""
    directory = stack_dir()
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"version": STATE_VERSION, "services": {n: asdict(r) for n, r in records.items()}}
    temporary = state_path().with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, state_path())
    for name in STOP_ORDER:
        if name in records:
            pid_path(name).write_text(f"{records[name].pid}\n")
        else:
            pid_path(name).unlink(missing_ok=True)


@contextlib.contextmanager
def stack_lock() -> Iterator[None]:
    """Serialise `up` and `down`, so two of them never start or stop the same service."""
    import fcntl  # POSIX only; imported here so the CLI itself still loads anywhere.

    directory = stack_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_identity(pid: int) -> tuple[str, str] | None:
    """(start time, command line) of a live process; None if none runs (zombies included)."""
    if pid <= 0:
        return None
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return ps_identity(pid)
    try:
        stat = (proc / str(pid) / "stat").read_text()
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    # The command name in parentheses may itself hold spaces or parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    argv = [part.decode(errors="replace") for part in cmdline.split(b"\0")[:-1]]
    return fields[19], " ".join(argv)


def ps_identity(pid: int) -> tuple[str, str] | None:
    """`process_identity` where there is no ``/proc`` (macOS, BSD): asks ``ps``."""
    result = subprocess.run(
        ["ps", "-ww", "-o", "stat=", "-o", "lstart=", "-o", "command=", "-p", str(pid)],
        capture_output=True,
        text=True,
        check=False,
    )
    # stat, then lstart in five words ("Wed Nov 25 20:32:56 2026"), then the command line.
    parts = result.stdout.strip().split(None, 6)
    if result.returncode != 0 or len(parts) < 7 or parts[0].startswith("Z"):
        return None
    return " ".join(parts[1:6]), parts[6]


def is_ours(record: ServiceRecord) -> bool:
    """Whether `record.pid` is still the very process `local up` started."""
    identity = process_identity(record.pid)
    return identity == (record.start_ticks, " ".join(record.argv))


def split_records(
    records: Mapping[str, ServiceRecord],
) -> tuple[dict[str, ServiceRecord], dict[str, ServiceRecord]]:
    """(live, stale): records whose process still runs, and records of gone or recycled pids."""
    live = {name: record for name, record in records.items() if is_ours(record)}
    stale = {name: record for name, record in records.items() if name not in live}
    return live, stale


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host:port` now (as uvicorn binds: SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def http_ok(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether GET `url` answers 2xx within `timeout` (stdlib only: callers must stay cheap)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/")
        return 200 <= connection.getresponse().status < 300
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def is_healthy(record: ServiceRecord, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the service answers: its health URL, the runner's ping, else a TCP connection."""
    if record.name == "resident":
        return ping(record.host, timeout) is not None
    path = HEALTH_PATHS.get(record.name)
    if path is not None:
        return http_ok(record.url + path, timeout)
    try:
        with socket.create_connection(
            (_WILDCARD_HOSTS.get(record.host, record.host), record.port), timeout
        ):
            return True
    except OSError:
        return False


def healthy_records() -> dict[str, ServiceRecord]:
    """The recorded services that are ours, alive and answering."""
    live, _ = split_records(load_records())
    return {name: record for name, record in live.items() if is_healthy(record)}


def environment_for(records: Mapping[str, ServiceRecord]) -> dict[str, str]:
    """The variables that point clients at these services (only those given contribute)."""
    environment: dict[str, str] = {}
    if "prefect" in records:
        environment["PREFECT_API_URL"] = records["prefect"].url + "/api"
    if "bedrock" in records:
        environment.update(
            {
                "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME": records["bedrock"].url,
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_REGION": "us-east-1",
                # botocore reads the region from AWS_DEFAULT_REGION, not AWS_REGION.
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
    if "nexus" in records:
        environment["NEXUS_BASE_URL"] = records["nexus"].url
        environment["NEXUS_API_KEY"] = DEV_KEY
    return environment


def stack_environment() -> dict[str, str] | None:
    """The variables that point clients at the running stack; None when nothing of it runs.

    Only services that are up and answering contribute: ``PREFECT_API_URL`` for Prefect,
    the emulator's endpoint with dummy AWS credentials and region, ``NEXUS_BASE_URL`` and
    ``NEXUS_API_KEY`` for the local Nexus. Costs a state-file read and one local HTTP probe
    per running service; imports nothing heavy.

    Example:
        >>> environment = stack_environment()
        >>> if environment and "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME" in environment:
        ...     os.environ.update(environment)
    """
    return environment_for(healthy_records()) or None


def start_service(
    name: str,
    argv: Sequence[str],
    *,
    host: str,
    port: int,
    env: Mapping[str, str],
    database: str | None = None,
    run_as: str | None = None,
) -> ServiceRecord:
    """Start one service in a new session (so it outlives the CLI), logging to its log file.

    Raises:
        ServiceStartError: it exited before it could be recorded.
    """
    log = log_path(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        output.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        output.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            cwd="/" if run_as else None,
            user=run_as,
            group=run_as,
            extra_groups=[] if run_as else None,
        )
    pid = process.pid
    # The handle is dropped on purpose while the child runs on: Popen warns about exactly that.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del process
    wanted = " ".join(argv)
    deadline = time.monotonic() + 2.0
    identity = process_identity(pid)
    # A loaded machine (or a launcher that re-executes itself) can show the pre-exec
    # command line for a moment; record the process as it will be seen from now on.
    while identity is not None and identity[1] != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
        identity = process_identity(pid)
    if identity is None:
        raise ServiceStartError(f"{name} exited at once; see its log: {log}")
    return ServiceRecord(
        name=name,
        pid=pid,
        host=host,
        port=port,
        argv=list(argv) if identity[1] == wanted else identity[1].split(" "),
        start_ticks=identity[0],
        started_at=time.time(),
        database=database,
    )


def _signal(record: ServiceRecord, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        if record.name in _STOP_SIGNALS:
            os.kill(record.pid, signum)
        else:
            # The whole group: `prefect server start` and uvicorn may leave helpers behind.
            os.killpg(record.pid, signum)


def _reap(pid: int) -> None:
    # Only a process this one started (tests, `up` waiting) can be reaped; others are init's.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(record: ServiceRecord, timeout: float) -> bool:
    """Wait up to `timeout` for the recorded process to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(record.pid)
        if not is_ours(record):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_service(record: ServiceRecord, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop a recorded process if it is still ours: its stop signal, then SIGKILL.

    Returns:
        True if it was running and is now stopped; False if it was not ours to stop.
    """
    if not is_ours(record):
        return False
    _signal(record, _STOP_SIGNALS.get(record.name, signal.SIGTERM))
    if not wait_gone(record, timeout) and is_ours(record):
        _signal(record, signal.SIGKILL)
        wait_gone(record, timeout)
    return True


def log_tail(name: str, lines: int = 15) -> str:
    """The last lines of a service's log, for error messages."""
    try:
        text = log_path(name).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
