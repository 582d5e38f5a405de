"""User-facing errors.

Everything a user can get wrong (a path, a file, an option) raises a subclass of
:class:`LtdError`. The CLI prints its message on one line and exits non-zero;
anything else that escapes is a bug in ltdistill.
"""


class LtdError(Exception):
    """Base class of errors caused by input, not by a bug."""


class DataError(LtdError):
    """A dataset path, file or image is missing, corrupt or inconsistent."""


class ConfigError(LtdError):
    """An option, override, preset or registry name is invalid."""


class ArtifactError(LtdError):
    """A distilled-set file cannot be read or has an unsupported format."""


class TrainingError(LtdError):
    """A run diverged (NaN/inf loss) or cannot proceed."""


class OutputError(LtdError):
    """An output path cannot be created or written."""
