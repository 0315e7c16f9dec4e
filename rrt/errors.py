"""The project's user-error type: bad input that a person can fix, as opposed to a bug.

Entry points print a ``UserError`` as one line (exit code 2) and let every other exception show its traceback.
It subclasses ``ValueError`` so code that already expects ``ValueError`` for bad values keeps working.
"""


class UserError(ValueError):
    """A mistake in a config key, path or file; the message names it and says what to change."""


class MissingFieldError(UserError, KeyError):
    """A data file lacks the field a key names (also a ``KeyError``, for callers that look fields up)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
