"""The one user-error type of the library, and how its messages are shortened to one line.

Library code raises :class:`UserError` (or a subclass) for anything the user must fix: a
missing file, an unreadable video, weights that do not fit. The command-line tools print
it as one line and exit with status 2; the ROS node names the parameter instead.
"""

from __future__ import annotations


class UserError(Exception):
    """A user error: printed as one line (what was expected, what came, what to do)."""


def one_line(text: str) -> str:
    """The first four non-empty lines of ``text`` joined into one (" ..." when there were more)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:4]) + (" ..." if len(lines) > 4 else "")
