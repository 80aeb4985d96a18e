"""The one way a command line turns expected failures into one line and exit status 2.

    def main(argv=None) -> int:
        return run_main(_main, argv)

An expected failure — bad input, a bad flag, a missing or unreadable file, a checkpoint
that will not load — is printed as `error: <message>` on stderr (the message names the
file, column or flag) and the command exits with 2. Anything else is a bug and keeps its
traceback. `--debug` anywhere in the arguments (or MIND_DEBUG=1) re-raises expected
failures too, with their traceback.
"""
from __future__ import annotations

import os
import pickle
import sys
from typing import Callable, Sequence

DEBUG_FLAG = "--debug"
USAGE_ERROR = 2

# Failures of the input or the environment, not of the code: one line, exit 2.
# ArrowInvalid, JSONDecodeError and UnicodeDecodeError are ValueErrors.
EXPECTED: tuple[type[BaseException], ...] = (
    FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
    ValueError, pickle.UnpicklingError, EOFError,
)


class ExpectedError(RuntimeError):
    """Base of the project's own expected failures that are not ValueErrors (a subclass
    may set `exit_status`, e.g. 143 for a run stopped by SIGTERM)."""


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("MIND_DEBUG", "") not in ("", "0")


def run_main(main: Callable[[list[str]], int], argv: Sequence[str] | None = None, *,
             expected: tuple[type[BaseException], ...] = ()) -> int:
    """Call `main(argv without --debug)`; an expected failure -> one line on stderr, 2.

    `expected` adds exception types to EXPECTED and ExpectedError.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        return main(args)
    except (*EXPECTED, ExpectedError, *expected) as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return getattr(e, "exit_status", USAGE_ERROR)


def one_line(e: BaseException) -> str:
    """The exception's message on one line (the first line of a multi-line message)."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    first = text.splitlines()[0]
    return first if len(first) <= 500 else first[:500] + " ..."
