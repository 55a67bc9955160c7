"""User-facing errors: the CLI prints their message on one line and exits with the error's ``exit_code``
(2 for bad input, files and environments; 3 for a run that diverged)."""


class MetarlError(Exception):
    """Base of every error caused by user input (config, files, run directories).

    Attributes:
        exit_code: the CLI's exit status for this error (2 unless a subclass says otherwise).
    """

    exit_code: int = 2


class ConfigError(MetarlError):
    """An unknown or invalid configuration key or value."""


class RunDirError(MetarlError):
    """A run directory that cannot be created, resumed or evaluated as asked."""


class CheckpointError(MetarlError):
    """A missing, corrupted or incompatible checkpoint."""


class RunLockedError(RunDirError):
    """Another process holds the run directory's lock (one writer per run dir)."""


class NonFiniteError(MetarlError):
    """A non-finite value (NaN or infinity) in a loss, metric, parameter or checkpoint: exit code 3."""

    exit_code = 3
