"""Exceptions that carry a one-line message for the user (the CLI prints it and exits with status 2)."""


class AelabError(Exception):
    """Base class: a problem with the user's input, not a bug in aelab."""


class ConfigError(AelabError):
    """A bad preset, config file, flag value or model option."""


class DataError(AelabError):
    """Data that cannot be found, downloaded, parsed or used with this model."""


class RunError(AelabError):
    """A run folder that is missing, incomplete or of an unknown format."""
