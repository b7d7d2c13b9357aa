"""Errors that mean bad input rather than a bug: the console scripts print their one-line
message and exit with status 2. Kept free of imports so any layer can raise them, and so the
command line can name them without importing torch or pandas."""


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to use instead."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the place and what was expected."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what was expected."""


class UnsafeArtifactError(ValueError):
    """An artifact's config that asks for something other than values; the message names the key."""
