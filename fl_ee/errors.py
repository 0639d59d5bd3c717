"""The one exception family that reaches the user as a one-line message, and one-line warnings."""

import sys


class UserError(Exception):
    """A problem with the user's input (config, data, paths); shown as one line, exit 2.

    ``key`` is the dotted config key the problem belongs to, when there is one.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def warn(message: str) -> None:
    """One line on stderr, ``fl-ee: warning: <message>``: the run goes on, but the user should know."""
    print(f"fl-ee: warning: {message}", file=sys.stderr, flush=True)


def shortened(text: str, limit: int = 80) -> str:
    """``text`` as a one-line message shows it: where longer than ``limit``, its start and end, and its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...{text[-(limit // 4):]} ({len(text)} characters)"
