"""The resident runner: a pre-imported process that forks one child per flow command.

`nexus-bedrock local up` starts it (``python -m nexus_bedrock_tasks.local.resident``) next to
the servers. It imports what a flow command would (`resident_preload`), starts no thread and
no event loop, and listens on ``<stack>/resident.sock`` (mode 0600). This module is the fork
server and its socket protocol: for each request of `nexus_bedrock_tasks.launcher` it checks
the caller's code, interpreter and descriptors, forks, and the child detaches from the runner
and becomes the caller (`resident_child`): the caller's stdin/stdout/stderr on 0/1/2, its
environment, working directory, umask, ``sys.path``, ``sys.argv`` and warning options,
Prefect settings and logging rebuilt from that environment. The child runs
`nexus_bedrock_tasks.cli.main` and ends as the interpreter would (non-daemon threads joined,
``atexit`` run, streams flushed), then reports its exit status to the launcher itself; the
runner reports only deaths by signal.

Children lead their own sessions, so `local down` (which signals the runner's process
group) never cuts an invocation short; the runner reaps every child and, when a launcher
disappears, sends its child SIGTERM (the run then ends its trace as on any SIGTERM).
POSIX only.
"""

from __future__ import annotations

import argparse
import contextlib
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
from nexus_bedrock_tasks.local.resident_child import become_caller, run_cli
from nexus_bedrock_tasks.local.resident_preload import preload

REQUEST_TIMEOUT_S: Final = 5.0
STOP_GRACE_S: Final = 5.0
"""How long a stopping runner still reaps and reports children in flight."""

FORKED_FROM: int | None = None
"""In a child: the pid of the runner it was forked from (`--verbose` says so); else None."""


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
