"""Errors that mean bad input rather than a bug: the console scripts print their one-line
message and exit with status 2. Kept free of imports so any layer can raise them."""


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to use instead."""
