"""Which Prefect API a flow run uses, and how the stack's Prefect server and database start.

`choose_prefect_api` runs before Prefect is imported, on every command that runs a flow, so
it only reads the stack's state file and probes one health URL: no Prefect import.

PostgreSQL mode (`local up --postgres`) runs a private cluster of the installed server
(``pg_config --bindir``, ``initdb`` on PATH, or ``/usr/lib/postgresql/<newest>/bin``): created
once with ``initdb``, listening on 127.0.0.1 only (no Unix socket), with role and database
``prefect`` and a generated password kept in ``<stack>/postgres.password`` (mode 0600).
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user and
its data lives in that user's home. `local down` stops it and keeps the data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote

from nexus_bedrock_tasks.local.stack import (
    DEFAULT_HOST,
    ServiceRecord,
    ServiceStartError,
    StackError,
    healthy_records,
    is_ours,
    log_tail,
    stack_dir,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PrefectApiChoice = Literal["env", "stack", "ephemeral"]

PG_USER: Final = "prefect"
PG_DATABASE: Final = "prefect"

EPHEMERAL_HINT: Final = (
    "hint: no Prefect server is running, so this run starts a temporary one (~10 s); "
    "`nexus-bedrock local up` makes later calls fast"
)

SERVER_QUIET_ENV: Final[Mapping[str, str]] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
}


def _profile_api_url() -> tuple[str, str] | None:
    """(url, profile file) when the active Prefect profile sets ``PREFECT_API_URL``."""
    profiles = os.environ.get("PREFECT_PROFILES_PATH")
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(profiles).expanduser() if profiles else home / "profiles.toml"
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or document.get("active") or "ephemeral"
    profile = document.get("profiles", {}).get(active, {})
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return (url, str(path)) if isinstance(url, str) and url else None


def running_prefect_api_url() -> str | None:
    """The stack's Prefect API URL (``http://host:port/api``) when its server answers."""
    record = healthy_records().get("prefect")
    return record.url + "/api" if record is not None else None


_logging_configured_for: tuple[str, ...] | None = None
"""The inputs Prefect's logging was last configured from here (None: only at import)."""


def refresh_prefect_settings() -> None:
    """Rebuild Prefect's settings and logging from ``os.environ``, if Prefect is loaded.

    Prefect reads its settings and configures logging once, at import. A process that
    changes ``PREFECT_*`` later (a child of the resident runner, which inherited Prefect
    from the runner; a command whose tools module imported Prefect) rebuilds both here.
    Logging is configured again only when its inputs changed since the last time: that
    costs ~0.1 s, twice the settings. Free when Prefect is not imported yet.
    """
    global _logging_configured_for
    if "prefect.context" not in sys.modules:
        return
    from prefect.context import refresh_global_settings_context
    from prefect.logging import configuration

    refresh_global_settings_context()
    inputs = _logging_inputs()
    if inputs == _logging_configured_for:
        return
    # Not incremental: handlers are built anew on the current sys.stderr and levels.
    configuration.PROCESS_LOGGING_CONFIG.clear()
    configuration.setup_logging()
    _logging_configured_for = inputs


def _logging_inputs() -> tuple[str, ...]:
    """What Prefect's logging configuration is made of: its settings and env overrides."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    config_path = settings.logging.config_path
    try:
        config_stamp = str(config_path.stat().st_mtime_ns) if config_path else ""
    except OSError:
        config_stamp = ""
    overrides = sorted(
        f"{key}={value}" for key, value in os.environ.items() if key.startswith("PREFECT_LOGGING_")
    )
    return (
        settings.logging.model_dump_json(),
        config_stamp,
        str(settings.server.logging_level),
        str(settings.internal.logging_level),
        *overrides,
    )


def choose_prefect_api(verbose: bool) -> PrefectApiChoice:
    """Pick the Prefect API for this process's flow runs, cheaply and before Prefect loads.

    In order: ``PREFECT_API_URL`` when set (environment or the active Prefect profile);
    the local stack's server when it answers (``PREFECT_API_URL`` is then set to it);
    otherwise Prefect's ephemeral mode, with a one-line hint on stderr. If Prefect is
    already imported, its settings and logging are then rebuilt from the environment.

    Args:
        verbose: also say on stderr which API was chosen and why.

    Returns:
        ``"env"``, ``"stack"`` or ``"ephemeral"``.

    Example:
        First thing in a command that runs a flow, before anything imports Prefect:

        >>> choose_prefect_api(verbose=True)  # doctest: +SKIP
        'stack'
    """
    mode = _pick_prefect_api(verbose)
    refresh_prefect_settings()
    return mode


def _pick_prefect_api(verbose: bool) -> PrefectApiChoice:
    env_url = os.environ.get("PREFECT_API_URL")
    configured = (env_url, "the environment") if env_url else _profile_api_url()
    if configured is not None:
        if verbose:
            _say(f"prefect api: {configured[0]} (PREFECT_API_URL from {configured[1]})")
        return "env"
    stack_url = running_prefect_api_url()
    if stack_url is not None:
        os.environ["PREFECT_API_URL"] = stack_url
        if verbose:
            _say(f"prefect api: {stack_url} (the local stack, `nexus-bedrock local up`)")
        return "stack"
    _say(EPHEMERAL_HINT)
    if verbose:
        _say("prefect api: ephemeral (a temporary server inside this process)")
    return "ephemeral"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def prefect_home() -> Path:
    """The Prefect home of the stack's server, apart from the user's own ``~/.prefect``."""
    return stack_dir() / "prefect"


def sqlite_database_url() -> str:
    """The stack's default Prefect database."""
    return f"sqlite+aiosqlite:///{prefect_home() / 'prefect.db'}"


def prefect_server_argv(host: str, port: int) -> list[str]:
    """The command line of the stack's Prefect API server (no UI)."""
    return [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--no-ui",
        "--host",
        host,
        "--port",
        str(port),
    ]


def prefect_server_env(api_url: str, database_url: str) -> dict[str, str]:
    """The environment of the Prefect server: its own home and database, no telemetry, no UI."""
    prefect_home().mkdir(parents=True, exist_ok=True)
    # The user's Prefect client settings (a Cloud key, a profile) have no business here.
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_") or key.startswith("PREFECT_SERVER_")
    }
    environment.update(SERVER_QUIET_ENV)
    environment.update(
        {
            "PREFECT_HOME": str(prefect_home()),
            # The server's own services call its API; never the user's remote one.
            "PREFECT_API_URL": api_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        }
    )
    return environment


@dataclass(frozen=True)
class PostgresCluster:
    """A private PostgreSQL cluster that only the stack uses, as Prefect's database.

    Attributes:
        bindir: where ``initdb``, ``postgres``, ``pg_isready`` and ``createdb`` live.
        data_dir: the cluster; kept by `local down`, so the next start skips ``initdb``.
        run_as: the user it runs as when we are root (PostgreSQL refuses root), else None.
    """

    bindir: Path
    data_dir: Path
    run_as: str | None

    def server_argv(self, port: int) -> list[str]:
        """The postmaster's command line: TCP on 127.0.0.1 only, no Unix socket."""
        return [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-h",
            DEFAULT_HOST,
            "-c",
            "unix_socket_directories=",
        ]

    def connection_url(self, port: int) -> str:
        """The SQLAlchemy URL Prefect's server connects with."""
        password = quote(postgres_password_path().read_text().strip(), safe="")
        return f"postgresql+asyncpg://{PG_USER}:{password}@{DEFAULT_HOST}:{port}/{PG_DATABASE}"


def postgres_password_path() -> Path:
    """The generated password of the cluster's ``prefect`` role (mode 0600)."""
    return stack_dir() / "postgres.password"


def _find_postgres_bindir() -> Path | None:
    for tool in ("pg_config", "initdb"):
        found = shutil.which(tool)
        if found is None:
            continue
        if tool == "pg_config":
            result = subprocess.run([found, "--bindir"], capture_output=True, text=True)
            bindir = Path(result.stdout.strip())
        else:
            bindir = Path(found).resolve().parent
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    # Debian and Ubuntu keep the server binaries off PATH.
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=_major_version)
    return versions[-1].parent if versions else None


def _major_version(postgres_binary: Path) -> int:
    name = postgres_binary.parent.parent.name
    return int(name) if name.isdigit() else 0


def postgres_cluster() -> PostgresCluster:
    """Where the stack's cluster lives and who runs it.

    As root the data directory sits in the ``postgres`` user's home, keyed by the stack
    directory, because that user cannot enter root's home.

    Raises:
        StackError: PostgreSQL or asyncpg is not installed, or root has no ``postgres`` user.
    """
    if importlib.util.find_spec("asyncpg") is None:
        raise StackError("--postgres needs the asyncpg driver: pip install asyncpg")
    bindir = _find_postgres_bindir()
    if bindir is None:
        raise StackError(
            "--postgres needs the PostgreSQL server binaries (initdb, postgres): install them "
            "(Debian/Ubuntu: apt-get install postgresql) or put pg_config on PATH"
        )
    if os.geteuid() != 0:
        return PostgresCluster(bindir, stack_dir() / "postgres" / "data", None)
    import pwd  # POSIX only, like running as root.

    try:
        owner = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackError(
            "--postgres as root needs a `postgres` user to run the server as "
            "(PostgreSQL refuses root; the Debian package creates one)"
        ) from exc
    key = hashlib.sha256(str(stack_dir()).encode()).hexdigest()[:12]
    return PostgresCluster(bindir, Path(owner.pw_dir) / "nexus-bedrock" / key / "data", "postgres")


def _make_owned_dirs(directory: Path, owner: str | None) -> None:
    missing = [parent for parent in (directory, *directory.parents) if not parent.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700)
        if owner is not None:
            shutil.chown(path, owner, owner)


def init_postgres_cluster(cluster: PostgresCluster) -> bool:
    """Create the cluster and its password unless it exists; whether it was created now.

    Raises:
        ServiceStartError: ``initdb`` failed (its output is in the message).
    """
    password_file = postgres_password_path()
    if (cluster.data_dir / "PG_VERSION").exists():
        if not password_file.exists():
            raise StackError(
                f"the password of the PostgreSQL cluster {cluster.data_dir} is lost "
                f"({password_file}): remove that directory to start afresh"
            )
        return False
    _make_owned_dirs(cluster.data_dir.parent, cluster.run_as)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.touch(mode=0o600)
    password_file.write_text(secrets.token_urlsafe(24) + "\n")
    # initdb reads the password from a file the server's user can open.
    handover = cluster.data_dir.parent / "initdb.pw"
    handover.write_text(password_file.read_text())
    if cluster.run_as is not None:
        shutil.chown(handover, cluster.run_as, cluster.run_as)
    try:
        result = subprocess.run(
            [
                str(cluster.bindir / "initdb"),
                "-D",
                str(cluster.data_dir),
                "-U",
                PG_USER,
                f"--pwfile={handover}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            cwd="/",
            user=cluster.run_as,
            group=cluster.run_as,
            extra_groups=[] if cluster.run_as else None,
        )
    finally:
        handover.unlink(missing_ok=True)
    if result.returncode != 0:
        raise ServiceStartError(f"initdb failed for {cluster.data_dir}:\n{result.stderr.strip()}")
    return True


def wait_postgres_ready(cluster: PostgresCluster, record: ServiceRecord, timeout: float) -> None:
    """Wait until the server accepts connections, then create Prefect's database if missing.

    Raises:
        ServiceStartError: the server exited, stayed unready, or the database was not created.
    """
    deadline = time.monotonic() + timeout
    ready = [str(cluster.bindir / "pg_isready"), "-q", "-h", DEFAULT_HOST, "-p", str(record.port)]
    while subprocess.run(ready, check=False).returncode != 0:
        if not is_ours(record) or time.monotonic() > deadline:
            raise ServiceStartError(f"postgres did not start:\n{log_tail('postgres')}")
        time.sleep(0.1)
    environment = {**os.environ, "PGPASSWORD": postgres_password_path().read_text().strip()}
    created = subprocess.run(
        [str(cluster.bindir / "createdb"), "-h", DEFAULT_HOST, "-p", str(record.port)]
        + ["-U", PG_USER, PG_DATABASE],
        capture_output=True,
        text=True,
        env=environment,
    )
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise ServiceStartError(f"createdb {PG_DATABASE} failed: {created.stderr.strip()}")
