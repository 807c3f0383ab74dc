"""Errors that the CLI turns into one line on stderr and a non-zero exit."""


class DiffrecError(Exception):
    """A user-facing error: bad input, missing files, unknown names, diverging training."""


class DataError(DiffrecError, ValueError):
    """Malformed, empty or out-of-range data."""


class UnsafePickleError(DataError):
    """A pickle that holds anything but plain data (dicts, lists, tuples, ints, floats, strings)."""


class TrainingDivergedError(DiffrecError):
    """The loss became NaN or infinite."""
