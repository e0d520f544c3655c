"""The one exception type that means "the user's input is wrong", not "the code is wrong"."""


class UserError(Exception):
    """A mistake in flags, a spec, a model directory or input paths.

    The command-line entry points print its message on one line and exit with status 2,
    without a traceback; every other exception is a bug and keeps its traceback.
    """

    exit_status = 2


class IncompleteInput(UserError):
    """Input files that could not be read to their end; the run did what it could with the rest."""

    exit_status = 3
