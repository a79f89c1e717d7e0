"""What the command-line tools share: expected failures end in one line, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable

# Errors that describe bad input (a file, a value); anything else is a bug and
# keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError)


def run_reporting_errors(fn: Callable[[], object], extra: tuple = ()) -> int:
    """Runs `fn`; returns 0, or prints `error: <message>` to stderr and returns 1.

    Args:
      fn: The work.
      extra: More exception types to report this way.
    """
    try:
        fn()
    except USER_ERRORS + tuple(extra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
