"""The one exception type that means "the user's input is wrong", not "the code is wrong", and how an
exception is quoted in a one-line message."""


class UserError(Exception):
    """A mistake in flags, a spec, a model directory or input paths.

    The command-line entry points print its message on one line and exit with status 2,
    without a traceback; every other exception is a bug and keeps its traceback.
    """

    exit_status = 2


class UnreadableState(UserError):
    """Live keyed state that cannot be read back (written by other code, or damaged). Raised in a worker: the
    stream stops, rather than start the state's keys afresh."""


class IncompleteInput(UserError):
    """Input files that could not be read to their end; the run did what it could with the rest."""

    exit_status = 3


def first_line(error: BaseException) -> str:
    """An exception's text up to its first line break, so a message quoting it stays one line; its type's
    name when it has no text."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
