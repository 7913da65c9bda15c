"""`nexus-bedrock`'s entry point: hand flow commands to the resident runner, else run the CLI.

A command that runs a flow (`invoke`, `session`, `eval`) pays ~2 s of imports (Prefect, the
flows, boto3) before its flow starts. `nexus-bedrock local up` starts a resident runner that
has paid them once (`nexus_bedrock_tasks.local.resident`); this launcher connects to its Unix
socket, sends the command line, the environment, the working directory and its own
stdin/stdout/stderr (``SCM_RIGHTS``), and the runner forks a child that runs the CLI exactly
as this process would have. The launcher forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT (and Ctrl-Z)
to the child and exits as the child did.

Anything that goes wrong before the child exists (no socket, a stale one, a refusal, a
timeout) runs the CLI in this process instead, silently; so does an interpreter the runner
cannot stand in for (other flags, ``-X`` options or hash seed: `interpreter_identity`);
``NEXUS_BEDROCK_RESIDENT=0`` always does. When the installed code changed since the runner
started, the launcher says once how to restart it and runs in-process.

Only the standard library is imported here, and only cheap parts of it: this module's
import cost is paid by every command, the fast ones included.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, Final

FLOW_COMMANDS: Final = frozenset({"invoke", "session", "eval"})
DISABLE_ENV: Final = "NEXUS_BEDROCK_RESIDENT"
SOCKET_NAME: Final = "resident.sock"
PROTOCOL: Final = 1
# The runner answers a request at once (it only forks); a longer wait means it is wedged,
# and running in-process is then cheaper than waiting on.
HANDSHAKE_TIMEOUT_S: Final = 3.0
FORWARDED_SIGNALS: Final = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
RESTART_HINT: Final = (
    "hint: nexus-bedrock's code changed since the resident runner started, so this call runs "
    "without it; restart it with `nexus-bedrock local down && nexus-bedrock local up`"
)
LOST_CHILD: Final = "error: the resident runner's child ended without an exit status"
# sockaddr_un's path holds 108 bytes on Linux, 104 on macOS.
_MAX_SOCKET_PATH: Final = 100
_HEADER: Final = struct.Struct("!I")
_MAX_MESSAGE: Final = 16 * 1024 * 1024


def stack_dir() -> str:
    """The local stack's directory, as ``settings.user_data_dir() / "stack"`` computes it."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "nexus-bedrock", "stack")


def socket_path() -> str:
    """The resident runner's Unix socket."""
    return os.path.join(stack_dir(), SOCKET_NAME)


def code_fingerprint() -> str:
    """A digest of the installed package's source files (paths, mtimes, sizes).

    The runner takes it when it starts; a launcher that computes another one knows the
    runner runs old code. Costs one ``stat`` per file (about a hundred), no reading.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha1(package.encode())
    for root in (package, os.path.join(os.path.dirname(package), "flows")):
        for path, stat in sorted(_source_files(root)):
            digest.update(f"{path}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
    return digest.hexdigest()


def _source_files(directory: str) -> Iterator[tuple[str, os.stat_result]]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.name != "__pycache__":
                yield from _source_files(entry.path)
        elif entry.name.endswith(".py"):
            yield entry.path, entry.stat()


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one length-prefixed JSON message, with `fds` attached to its first byte."""
    data = json.dumps(message).encode()
    frame = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else 0
    if sent < len(frame):
        # Not an empty send: once the peer has answered a whole request and closed (a
        # refusal), even a zero-byte send fails with EPIPE and the answer would be lost.
        sock.sendall(frame[sent:])


def recv_message(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], list[int]]:
    """Receive one message of `send_message` and the descriptors that came with it.

    Raises:
        EOFError: the peer closed before a whole message arrived.
        ValueError: the bytes are not a message.
    """
    buffer = b""
    fds: list[int] = []
    while len(buffer) < _HEADER.size:
        if max_fds and not fds:
            chunk, fds, _, _ = socket.recv_fds(sock, 65536, max_fds)
        else:
            chunk = sock.recv(65536)
        if not chunk:
            _close_all(fds)
            raise EOFError("the peer closed the connection")
        buffer += chunk
    (size,) = _HEADER.unpack_from(buffer)
    if size > _MAX_MESSAGE:
        _close_all(fds)
        raise ValueError(f"a {size}-byte message is too large")
    while len(buffer) < _HEADER.size + size:
        chunk = sock.recv(_HEADER.size + size - len(buffer))
        if not chunk:
            _close_all(fds)
            raise EOFError("the peer closed the connection mid-message")
        buffer += chunk
    message = json.loads(buffer[_HEADER.size : _HEADER.size + size])
    if not isinstance(message, dict):
        _close_all(fds)
        raise ValueError("a message is a JSON object")
    return message, fds


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def connect(path: str, timeout: float) -> socket.socket:
    """Connect to the Unix socket at `path`, also when it is longer than ``sun_path`` allows.

    Raises:
        OSError: nothing listens there.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            sock.connect(path)
        else:
            # A deep data dir (a test's tmp dir) overflows sun_path: connect by a short
            # relative name from the socket's directory (this process has one thread).
            here = os.open(".", os.O_RDONLY)
            try:
                os.chdir(os.path.dirname(path))
                sock.connect(os.path.basename(path))
            finally:
                os.fchdir(here)
                os.close(here)
    except BaseException:
        sock.close()
        raise
    return sock


def interpreter_identity() -> dict[str, Any]:
    """Which Python runs this process, as it started: a runner on another cannot stand in.

    Besides the installation and version, what the interpreter fixes at start-up and a
    forked child cannot take on: ``sys.flags`` (``-O``, ``-b``, ``-X dev``, ``-X utf8``,
    ``PYTHONHASHSEED=0``, ...), the ``-X`` options and a fixed hash seed. A caller that
    differs in any of them runs in-process. Warning options (``-W``, ``PYTHONWARNINGS``)
    are not here: the child applies the caller's.
    """
    hash_seed = None if sys.flags.ignore_environment else os.environ.get("PYTHONHASHSEED")
    return {
        "prefix": sys.prefix,
        "version": sys.version,
        "flags": list(sys.flags),
        "xoptions": dict(sys._xoptions),
        "hash_seed": None if hash_seed in (None, "", "random") else hash_seed,
    }


def ping(path: str, timeout: float) -> dict[str, Any] | None:
    """Ask the runner at `path` whether it serves: ``{"pong": pid, "fingerprint": ...}``.

    Returns:
        Its answer, or None when nothing (or something else) answers within `timeout`.
    """
    try:
        with connect(path, timeout) as sock:
            send_message(sock, {"protocol": PROTOCOL, "ping": True})
            reply, _ = recv_message(sock)
    except (OSError, EOFError, ValueError):
        return None
    return reply if isinstance(reply.get("pong"), int) else None


def _stdio_spec() -> list[dict[str, Any]]:
    """How this interpreter set up its text streams, for the child to build the same ones."""
    specs = []
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        specs.append(
            {
                "encoding": getattr(stream, "encoding", None) or "utf-8",
                "errors": getattr(stream, "errors", None) or "strict",
                "line_buffering": bool(getattr(stream, "line_buffering", False)),
                "write_through": bool(getattr(stream, "write_through", False)),
            }
        )
    return specs


def build_request(argv: Sequence[str], cwd: str) -> dict[str, Any]:
    """What the child needs to be this process: argv, environment, cwd, umask, streams, -W."""
    umask = os.umask(0o022)
    os.umask(umask)
    return {
        "protocol": PROTOCOL,
        "fingerprint": code_fingerprint(),
        "interpreter": interpreter_identity(),
        "argv": list(argv),
        "env": dict(os.environ),
        "cwd": cwd,
        "umask": umask,
        "sys_path": list(sys.path),
        "warnoptions": list(sys.warnoptions),
        "stdio": _stdio_spec(),
    }


@contextmanager
def forwarding_signals(pid: int) -> Iterator[None]:
    """Pass the signals a terminal or a supervisor sends this process on to the child `pid`.

    Ctrl-Z stops the child (SIGSTOP: its process group is orphaned, so SIGTSTP would be
    discarded) and then this process; ``fg`` continues both.
    """

    def forward(signum: int, frame: FrameType | None) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def stop(signum: int, frame: FrameType | None) -> None:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        # Running again: `fg` sent SIGCONT, which `forward` passes on.
        signal.signal(signal.SIGTSTP, stop)

    wanted = [getattr(signal, name) for name in FORWARDED_SIGNALS if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, forward) for signum in wanted}
    if hasattr(signal, "SIGTSTP"):
        previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, stop)
        previous[signal.SIGCONT] = signal.signal(signal.SIGCONT, forward)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_in_resident(argv: Sequence[str]) -> dict[str, Any] | None:
    """Run `argv` in a child of the resident runner; its final status, or None to run here.

    Returns:
        ``{"exit": code}`` or ``{"signal": number}`` as the child ended; None when the runner
        is absent, refuses or fails before the child starts.
    """
    path = socket_path()
    try:
        cwd = os.getcwd()
        sock = connect(path, HANDSHAKE_TIMEOUT_S)
    except OSError:
        return None
    with sock:
        try:
            send_message(sock, build_request(argv, cwd), fds=(0, 1, 2))
            reply, _ = recv_message(sock)
        except (OSError, EOFError, ValueError):
            return None
        pid = reply.get("pid")
        if not isinstance(pid, int):
            if reply.get("refused") == "stale":
                print(RESTART_HINT, file=sys.stderr, flush=True)
            return None
        sock.settimeout(None)
        with forwarding_signals(pid):
            try:
                final, _ = recv_message(sock)
            except (OSError, EOFError, ValueError):
                print(LOST_CHILD, file=sys.stderr, flush=True)
                return {"exit": 1}
    return final


def exit_like(final: dict[str, Any]) -> int:
    """End this process as the child ended: the same exit code, or the same deadly signal."""
    signum = final.get("signal")
    if isinstance(signum, int):
        # As CPython does after an uncaught KeyboardInterrupt: the shell then sees 128+N.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    code = final.get("exit")
    return code if isinstance(code, int) else 1


def wants_resident(argv: Sequence[str], environ: dict[str, str] | os._Environ[str]) -> bool:
    """Whether `argv` runs a flow (worth the runner) and the user has not switched it off."""
    return bool(argv) and argv[0] in FLOW_COMMANDS and environ.get(DISABLE_ENV) != "0"


def main() -> None:
    """Console-script entry point of ``nexus-bedrock``."""
    if wants_resident(sys.argv[1:], os.environ):
        final = run_in_resident(sys.argv)
        if final is not None:
            sys.exit(exit_like(final))
    from nexus_bedrock_tasks.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
