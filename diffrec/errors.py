"""Errors that the CLI turns into one line on stderr and a non-zero exit."""


class DiffrecError(Exception):
    """A user-facing error: bad input, missing files, unknown names, diverging training."""


class DataError(DiffrecError, ValueError):
    """Malformed, empty or out-of-range data."""


class UnsafePickleError(DataError):
    """A pickle that holds anything but plain data (dicts, lists, tuples, ints, floats, strings)."""


class TrainingDivergedError(DiffrecError):
    """The loss became NaN or infinite."""


class ConfigError(DiffrecError, ValueError):
    """An invalid combination of options (e.g. a schedule whose betas leave (0, 1] for this T)."""
