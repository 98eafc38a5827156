"""User-facing errors: one clear line, exit code 2, no traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and how to fix it."""


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main`` so a :class:`UserError` prints one line and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper
