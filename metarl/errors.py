"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class MetarlError(Exception):
    """Base of every error caused by user input (config, files, run directories)."""


class ConfigError(MetarlError):
    """An unknown or invalid configuration key or value."""


class RunDirError(MetarlError):
    """A run directory that cannot be created, resumed or evaluated as asked."""


class CheckpointError(MetarlError):
    """A missing, corrupted or incompatible checkpoint."""
