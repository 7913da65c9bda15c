"""The resident runner: a pre-imported process that forks one child per flow command.

`nexus-bedrock local up` starts it (``python -m nexus_bedrock_tasks.local.resident``) next to
the servers. It imports Prefect, the flows and the CLI once and loads botocore's service
model, starts no thread and no event loop, and listens on ``<stack>/resident.sock`` (mode
0600). For each request of `nexus_bedrock_tasks.launcher` it forks a child that becomes the
caller: the caller's stdin/stdout/stderr on 0/1/2, its environment, working directory,
umask, ``sys.path`` and ``sys.argv``, Prefect settings and logging rebuilt from that
environment. The child runs `nexus_bedrock_tasks.cli.main` and ends as the interpreter
would (non-daemon threads joined, ``atexit`` run, streams flushed), then reports its exit
status to the launcher itself; the runner reports only deaths by signal.

Children lead their own sessions, so `local down` (which signals the runner's process
group) never cuts an invocation short; the runner reaps every child and, when a launcher
disappears, sends its child SIGTERM (the run then ends its trace as on any SIGTERM).
POSIX only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any, Final, NoReturn

from nexus_bedrock_tasks.launcher import (
    PROTOCOL,
    code_fingerprint,
    interpreter_identity,
    ping,
    recv_message,
    send_message,
)

PRELOADED: Final = (
    "prefect",
    "prefect.main",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.client.orchestration",
    "flows.invoke_agent",
    "flows.agent_session",
    "flows.batch_evaluation",
    "nexus_bedrock_tasks.cli",
    "nexus_bedrock_tasks.cli_invoke",
    "nexus_bedrock_tasks.cli_eval",
    "nexus_bedrock_tasks.cli_runtime",
    "nexus_bedrock_tasks.local.prefect_api",
    "nexus_bedrock_tasks.nexus.exporter",
    "nexus_bedrock_tasks.tracing",
    "nexus_bedrock_tasks.results",
    "rich.console",
    "rich.progress",
    # Imported lazily by a flow run: Prefect's engine, anyio, OpenTelemetry, typer's parser.
    "prefect.utilities.visualization",
    "fastapi",
    "starlette.applications",
    "anyio._backends._asyncio",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "anyio.streams.tls",
    "opentelemetry.metrics",
    "opentelemetry._logs",
    "pydantic.color",
    "encodings.idna",
    "http.cookies",
    "typer._adapters",
    "typer._click.decorators",
)
"""What a flow command would import; the children find it in ``sys.modules``."""

REQUEST_TIMEOUT_S: Final = 5.0
STOP_GRACE_S: Final = 5.0
"""How long a stopping runner still reaps and reports children in flight."""

FORKED_FROM: int | None = None
"""In a child: the pid of the runner it was forked from (`--verbose` says so); else None."""

_ZYGOTE_STREAMS: list[object] = []
"""The runner's own text streams, kept alive in a child: collecting one would close 0/1/2."""


def preload() -> None:
    """Import what flow commands use and load botocore's models, without starting threads.

    Prefect's settings and logging are then configured from this process's environment,
    which `local up` makes a non-verbose command's (``PREFECT_LOGGING_LEVEL=WARNING``), so a
    child configures logging again only when its caller's settings differ.
    """
    for name in PRELOADED:
        importlib.import_module(name)
    from nexus_bedrock_tasks.local.prefect_api import refresh_prefect_settings

    refresh_prefect_settings()
    _prebuild_cli()
    _adopt_stack_aws_defaults()
    from nexus_bedrock_tasks.bedrock import client as bedrock_client

    # The shared session keeps the loaded models for children whose AWS settings match;
    # warmed only when credentials come from the environment (no metadata-service probe).
    warm_up = getattr(bedrock_client, "warm_up", None)
    if warm_up is not None and (
        os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
    ):
        warm_up()
    import boto3

    # Explicit dummy credentials and endpoint: creating the client must not walk the
    # credential chain (an instance-metadata probe) nor open a connection.
    session = boto3.session.Session(
        aws_access_key_id="resident", aws_secret_access_key="resident", region_name="us-east-1"
    )
    session.client("bedrock-agent-runtime", endpoint_url="http://127.0.0.1:9")


def _adopt_stack_aws_defaults() -> None:
    """Take the AWS settings most children get: the stack's emulator, unless AWS is set up.

    As `cli_runtime.use_local_stack_defaults` decides per command, but from the environment
    alone (walking the credential chain may probe the instance-metadata service) and from
    the recorded emulator, which may still be starting.
    """
    from nexus_bedrock_tasks.local.stack import environment_for, load_records

    configured = ("AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")
    bedrock = load_records().get("bedrock")
    if bedrock is None or any(os.environ.get(key) for key in configured):
        return
    os.environ.update(environment_for({"bedrock": bedrock}))


def _prebuild_cli() -> None:
    """Build the click command of the CLI once, here, instead of in every child (~30 ms).

    Typer builds it from the app on each call, through `typer.main.get_command`; each
    child gets its own copy of this one with the fork, so no state is shared between runs.
    """
    import typer.main

    from nexus_bedrock_tasks.cli import app

    built = typer.main.get_command(app)
    build = typer.main.get_command

    def prebuilt(typer_instance: typer.Typer) -> Any:
        return built if typer_instance is app else build(typer_instance)

    setattr(typer.main, "get_command", prebuilt)  # noqa: B010 - a deliberate patch


def bind_unix_socket(path: str) -> socket.socket:
    """Listen on `path` with mode 0600 (created so, never world-readable for a moment)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0o177)
    here = os.open(".", os.O_RDONLY)
    try:
        # A short relative name fits sun_path however deep the data dir is.
        os.chdir(directory)
        listener.bind(os.path.basename(path))
    finally:
        os.fchdir(here)
        os.close(here)
        os.umask(previous_umask)
    os.chmod(path, 0o600)
    listener.listen(128)
    return listener


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} resident[{os.getpid()}]: {message}", flush=True)


class ResidentRunner:
    """The fork server: accept, check, fork, reap, report.

    Attributes:
        path: the Unix socket it listens on.
        fingerprint: `code_fingerprint()` of the code it imported.
    """

    def __init__(self, path: str, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.listener = bind_unix_socket(path)
        self._socket_inode = os.stat(path).st_ino
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then let the children in flight finish (a while)."""
        signal.set_wakeup_fd(self._wake_write)
        signal.signal(signal.SIGCHLD, _wake_only)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.selector.register(self._wake_read, selectors.EVENT_READ, None)
        try:
            while not self.stopping:
                self._serve_once(timeout=None)
            self._close_listener()
            deadline = time.monotonic() + STOP_GRACE_S
            while self.children and time.monotonic() < deadline:
                self._serve_once(timeout=0.1)
        finally:
            self._close_listener()

    def _serve_once(self, timeout: float | None) -> None:
        for key, _ in self.selector.select(timeout):
            if key.fileobj is self.listener:
                self._accept()
            elif key.fileobj == self._wake_read:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 512)
            else:
                self._peer_event(key.data)
        self._reap()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _close_listener(self) -> None:
        if self.listener.fileno() < 0:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        self.listener.close()
        # Remove the socket only if it is still ours, not one a newer runner bound.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._socket_inode:
                os.unlink(self.path)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        conn.settimeout(REQUEST_TIMEOUT_S)
        fds: list[int] = []
        try:
            request, fds = recv_message(conn, max_fds=3)
            self._answer(conn, request, fds)
        except (OSError, EOFError, ValueError) as exc:
            _log(f"dropped a request: {type(exc).__name__}: {exc}")
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _answer(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        if request.get("ping"):
            send_message(conn, {"pong": os.getpid(), "fingerprint": self.fingerprint})
            conn.close()
            return
        refusal = self._refusal(request, fds)
        if refusal is not None:
            _log(f"refused {request.get('argv', [])[1:2]}: {refusal}")
            send_message(conn, {"refused": refusal})
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become_child(conn, request, fds)
        self.children[pid] = conn
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, pid)
        _log(f"child {pid}: {' '.join(request['argv'][1:2])}")

    def _refusal(self, request: dict[str, Any], fds: Sequence[int]) -> str | None:
        if request.get("protocol") != PROTOCOL:
            return "protocol"
        if request.get("interpreter") != interpreter_identity():
            return "interpreter"
        if request.get("fingerprint") != self.fingerprint:
            return "stale"
        if len(fds) != 3:
            return "descriptors"
        if self.stopping:
            return "stopping"
        # fork() copies only the calling thread: a lock another thread held stays locked
        # forever in the child, so a runner that somehow started one must not fork.
        if threading.active_count() != 1:
            return "threads"
        return None

    def _peer_event(self, pid: int) -> None:
        conn = self.children.get(pid)
        if conn is None:
            return
        try:
            data = conn.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # The launcher is gone (killed): end its child as a terminal's hangup would.
            _log(f"child {pid}: its launcher went away; SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            self.selector.unregister(conn)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                final: dict[str, int] = {"signal": os.WTERMSIG(status)}
            else:
                final = {"exit": os.waitstatus_to_exitcode(status)}
            # The child reported a normal end itself; this reaches a launcher only when it
            # was killed first, and is ignored otherwise.
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.settimeout(1.0)
                send_message(conn, final)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn)
            conn.close()
            _log(f"child {pid}: {final}")

    def _become_child(
        self, conn: socket.socket, request: dict[str, Any], fds: list[int]
    ) -> NoReturn:
        """The child's whole life: detach from the runner, become the caller, run the CLI."""
        final: dict[str, int] = {"exit": 1}
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            self.listener.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
            for other in self.children.values():
                other.close()
            os.setsid()
            global FORKED_FROM
            FORKED_FROM = os.getppid()
            conn.settimeout(None)
            send_message(conn, {"pid": os.getpid()})
            become_caller(request, fds)
            final = run_cli(request["argv"])
        except BaseException:  # noqa: B036 - the child must report, whatever happened
            with contextlib.suppress(Exception):
                traceback.print_exc()
        # Done: a launcher that leaves now (and the runner's SIGTERM for it) changes nothing.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            send_message(conn, final)
        os._exit(final.get("exit", 128 + final.get("signal", 0)))


def _wake_only(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD's handler: the wakeup fd already woke the loop, which reaps."""


def become_caller(request: dict[str, Any], fds: Sequence[int]) -> None:
    """Take on the launcher's streams, environment, directory, umask and import path."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(int(request["umask"]))
    os.chdir(request["cwd"])
    sys.path[:] = request["sys_path"]
    importlib.invalidate_caches()
    _reopen_stdio(request["stdio"])
    _rebind_log_streams()
    # What the interpreter derives from the environment once, at start-up.
    time.tzset()
    import tempfile

    tempfile.tempdir = None


def _reopen_stdio(specs: Sequence[dict[str, Any]]) -> None:
    """Text streams on 0/1/2 set up as the launcher's interpreter set up its own."""
    _ZYGOTE_STREAMS.extend([sys.stdin, sys.stdout, sys.stderr])
    streams = []
    for fd, spec in enumerate(specs):
        reading = fd == 0
        unbuffered = bool(spec["write_through"]) and not reading
        binary = open(  # lives as long as the process
            fd, "rb" if reading else "wb", buffering=0 if unbuffered else -1, closefd=False
        )
        streams.append(
            io.TextIOWrapper(
                binary,
                encoding=spec["encoding"],
                errors=spec["errors"],
                newline=None if reading else "\n",
                line_buffering=bool(spec["line_buffering"]),
                write_through=unbuffered,
            )
        )
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc]


def _rebind_log_streams() -> None:
    """Point log handlers that wrote to the runner's stdout/stderr at the new streams."""
    import logging

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and stream in _ZYGOTE_STREAMS:
                handler.setStream(sys.stderr if stream is _ZYGOTE_STREAMS[2] else sys.stdout)


def run_cli(argv: Sequence[str]) -> dict[str, int]:
    """Run the CLI with `argv` and end as the interpreter would; how it ended.

    Returns:
        ``{"exit": code}``, or ``{"signal": SIGINT}`` after an uncaught KeyboardInterrupt
        (CPython then kills itself with SIGINT, so a shell sees 130).
    """
    from nexus_bedrock_tasks.cli import main

    sys.argv = list(argv)
    final: dict[str, int]
    try:
        main()
        final = {"exit": 0}
    except SystemExit as exc:
        final = {"exit": _system_exit_code(exc)}
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        final = {"signal": int(signal.SIGINT)}
    except BaseException:  # noqa: B036 - as the interpreter: print it, exit 1
        sys.excepthook(*sys.exc_info())
        final = {"exit": 1}
    if not _finalize_like_the_interpreter() and "exit" in final:
        # Py_FinalizeEx's verdict when the streams cannot be flushed (a closed pipe).
        final = {"exit": 120}
    return final


def _system_exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finalize_like_the_interpreter() -> bool:
    """Join non-daemon threads, run ``atexit``, flush the streams; whether both flushed."""
    import atexit

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    getattr(atexit, "_run_exitfuncs")()  # noqa: B009 - CPython's own exit path
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            flushed = False
    return flushed


def resident_argv(path: str) -> list[str]:
    """The command line `local up` starts the runner with."""
    return [sys.executable, "-m", "nexus_bedrock_tasks.local.resident", "--socket", path]


def runs_older_code(path: str, timeout: float = 2.0) -> bool:
    """Whether the runner at `path` answers and imported other code than is installed now.

    A runner that does not answer (yet) is not judged here: health checks do that.
    """
    answer = ping(path, timeout)
    return answer is not None and answer.get("fingerprint") != code_fingerprint()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nexus_bedrock_tasks.local.resident --socket PATH`` (what `local up` runs)."""
    parser = argparse.ArgumentParser(description="The local stack's resident runner.")
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    args = parser.parse_args(argv)
    started = time.monotonic()
    # Taken before the imports: code edited while they run counts as changed.
    fingerprint = code_fingerprint()
    preload()
    runner = ResidentRunner(args.socket, fingerprint)
    _log(
        f"ready on {args.socket} in {time.monotonic() - started:.1f} s "
        f"({len(sys.modules)} modules, {threading.active_count()} thread)"
    )
    runner.serve()
    _log("stopped")
    return 0


if __name__ == "__main__":
    # Run the imported module, not this `__main__` copy: children report through its
    # globals (`FORKED_FROM`), which the CLI looks up by the module's real name.
    from nexus_bedrock_tasks.local import resident

    sys.exit(resident.main())
