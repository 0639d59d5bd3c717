"""The one exception family that reaches the user as a one-line message, and one-line warnings."""

import re
import sys

_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # control characters, and what str.splitlines breaks at


class UserError(Exception):
    """A problem with the user's input (config, data, paths); shown as one line, exit 2.

    ``key`` is the dotted config key the problem belongs to, when there is one.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def warn(message: str) -> None:
    """One line on stderr, ``fl-ee: warning: <message>``: the run goes on, but the user should know."""
    print(f"fl-ee: warning: {printable(message)}", file=sys.stderr, flush=True)


def printable(text: str) -> str:
    """``text`` for a one-line message: control characters (a newline in a path, say) written as escapes."""
    return _BREAKS.sub(lambda found: repr(found.group())[1:-1], text)


def shortened(text: str, limit: int = 80) -> str:
    """``text`` as a one-line message shows it: where longer than ``limit``, its start and end, and its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...{text[-(limit // 4):]} ({len(text)} characters)"
