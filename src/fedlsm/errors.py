"""User-facing errors.

Everything a user can get wrong (a config value, a path, a column name) raises
:class:`FedLSMError` with a message that names the field and the fix. The CLI prints
such errors as one line and exits with status 2, never with a traceback.
"""


class FedLSMError(Exception):
    """An error caused by user input; its message is shown as-is."""


class ConfigError(FedLSMError):
    """A config field has a bad value."""

    def __init__(self, field: str, problem: str, fix: str | None = None):
        self.field = field
        msg = f"{field}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)
