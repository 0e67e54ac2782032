"""Errors that mean "the user asked for something impossible": the CLI prints one line, exits 2."""


class UserError(Exception):
    """Base class: reported as ``error: <message>`` without a traceback."""


class ConfigError(UserError):
    """A configuration value or override that cannot work."""


class DataError(UserError):
    """A dataset that is missing, malformed or unknown."""


class CheckpointError(UserError):
    """A checkpoint directory that is missing, incomplete or corrupt."""
