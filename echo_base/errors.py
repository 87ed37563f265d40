"""The error types of bad input.

Every error a user causes with a data file, a config key or a command-line argument
derives from :class:`BadInputError`, and its message names the file and line, the key or
the argument. Command-line entry points print exactly these as one line and exit with
code 2; any other exception is a bug and keeps its traceback. Two failures that are no
bug either end the same way: a save the storage refused (:class:`StorageError`) and a
run stopped by a non-finite loss (:class:`NonFiniteError`).
"""


class BadInputError(ValueError):
    """Bad input from the user (a data file, a config key, an argument); the message names where."""


class UsageError(BadInputError):
    """A bad command-line argument or option value."""


class DataFormatError(BadInputError):
    """A malformed data file; the message names the file and, where there is one, the line."""


class StorageError(BadInputError):
    """A save the storage refused (no space, over quota, read-only, not permitted); the message names the path.

    Not the user's input, but the user's to fix and not a bug, so it ends a command the same
    way: one line, exit code 2. What was published before the failed save stays intact.
    """


class NonFiniteError(BadInputError):
    """Training met a NaN or infinite loss, gradient or weight; the message names the step and batch, or the weight.

    Usually the data (a row) or the hyperparameters (a learning rate too high) cause it,
    so it ends a command in one line, exit code 2.
    """
