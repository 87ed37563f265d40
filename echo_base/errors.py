"""The error types of bad input.

Every error a user causes with a data file, a config key or a command-line argument
derives from :class:`BadInputError`, and its message names the file and line, the key or
the argument. Command-line entry points print exactly these as one line and exit with
code 2; any other exception is a bug and keeps its traceback.
"""


class BadInputError(ValueError):
    """Bad input from the user (a data file, a config key, an argument); the message names where."""


class UsageError(BadInputError):
    """A bad command-line argument or option value."""


class DataFormatError(BadInputError):
    """A malformed data file; the message names the file and, where there is one, the line."""
