"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class LmcollapseError(Exception):
    """A problem the user can fix: bad input, bad config, a busy or inconsistent run directory.

    The message is one line that names the problem and the fix. Anything else that escapes is a
    bug and keeps its traceback.
    """

    exit_code = 2


class ConfigError(LmcollapseError):
    """An invalid pipeline config or override; the message names the dotted key."""


class InterruptedStage(LmcollapseError):
    """SIGINT or SIGTERM arrived; the stage stopped at a safe point and can be resumed."""

    exit_code = 130


class DiskFull(LmcollapseError):
    """The disk filled while writing; what was being written was removed, completed stages are intact."""

    exit_code = 3


def error_reason(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name:
    the "(reason)" of a one-line error built around a library's exception."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
