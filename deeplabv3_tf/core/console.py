"""Messages to the person at the terminal that are neither progress nor errors."""

from __future__ import annotations

import sys

_NOTED: set[str] = set()


def note_once(key: str, message: str) -> None:
    """Prints `message` to stderr the first time `key` is seen in this process."""
    if key not in _NOTED:
        _NOTED.add(key)
        print(message, file=sys.stderr)
