"""A child of the resident runner becomes its caller: streams, environment, cwd, warnings.

`nexus_bedrock_tasks.local.resident` forks a child per request of
`nexus_bedrock_tasks.launcher`; the child calls `become_caller` with the request and the
caller's stdin/stdout/stderr, then `run_cli`, which runs `nexus_bedrock_tasks.cli.main` and
ends as the interpreter would. What the interpreter fixes at start-up and a child cannot
change (``sys.flags``, ``-X`` options, the hash seed) is not adopted here: the runner
refuses a caller whose interpreter differs in those (`launcher.interpreter_identity`).
"""

from __future__ import annotations

import importlib
import io
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any, Final, cast

INTERPRETER_START_FILTERS: Final = tuple(warnings.filters)
"""The runner's warning filters as its interpreter set them up, before any library added one.

Taken when the runner imports this module, which it does before it preloads anything.
"""

INTERPRETER_START_OPTIONS: Final = tuple(sys.warnoptions)
"""The ``-W`` / ``PYTHONWARNINGS`` options those filters came from."""

IMPLICIT_FILTERS: Final = (
    ()
    if hasattr(sys, "gettotalrefcount")
    else (
        ("default", None, DeprecationWarning, "__main__", 0),
        ("ignore", None, DeprecationWarning, None, 0),
        ("ignore", None, PendingDeprecationWarning, None, 0),
        ("ignore", None, ImportWarning, None, 0),
        ("ignore", None, ResourceWarning, None, 0),
    )
)
"""The filters CPython installs before it reads any option (none in a debug build).

As `_warnings.c` builds them and the `warnings` documentation lists them ("Default Warning
Filter"): the ``-W`` options go in front of these.
"""

_ZYGOTE_STREAMS: list[object] = []
"""The runner's own text streams, kept alive in a child: collecting one would close 0/1/2."""


def become_caller(request: dict[str, Any], fds: Sequence[int]) -> None:
    """Take on the launcher's streams, environment, directory, umask, import path, -W."""
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

    apply_warning_options(request["warnoptions"])


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


def apply_warning_options(options: Sequence[str]) -> None:
    """Warning filters as the caller's ``-W`` and ``PYTHONWARNINGS`` would have set them.

    The interpreter turns those options (``sys.warnoptions``) into filters once, at start-up,
    in front of its implicit ones; the libraries imported since then added theirs in front
    of (or behind) that block. When the caller's options are not the runner's, the block is
    rebuilt from the caller's options, the libraries' filters kept around it. A malformed
    option is reported on stderr and ignored, as the interpreter does.
    """
    if list(options) == list(INTERPRETER_START_OPTIONS):
        return
    current = list(warnings.filters)
    start = _find_block(current, INTERPRETER_START_FILTERS)
    if start is None:
        # A library removed or reordered start-up filters: keep what it added, in front.
        before, after = [f for f in current if f not in INTERPRETER_START_FILTERS], []
    else:
        before, after = current[:start], current[start + len(INTERPRETER_START_FILTERS) :]
    # The list itself, not a copy: `_warnings` (the C side of `warn`) shares it.
    filters = cast("list[Any]", warnings.filters)
    filters[:] = IMPLICIT_FILTERS
    sys.warnoptions[:] = options
    getattr(warnings, "_processoptions")(list(options))  # noqa: B009 - the interpreter's parser
    filters[:0] = before
    filters.extend(after)
    getattr(warnings, "_filters_mutated")()  # noqa: B009 - `warn` caches by filters version


def _find_block(items: Sequence[Any], block: Sequence[Any]) -> int | None:
    """Where `block` starts as a contiguous run in `items` (the last one), or None."""
    for start in range(len(items) - len(block), -1, -1):
        if all(items[start + i] is part for i, part in enumerate(block)):
            return start
    return None


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
