"""Project-wide error types: one clear message naming the input and what was expected."""
from __future__ import annotations


def _one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines of wrapped library messages too) as one space."""
    return " ".join(str(text).split())


class InputError(ValueError):
    """Bad user input (file, array, name or config value); message names the input and the expectation."""

    def __init__(self, where: str, problem: str, expected: str | None = None) -> None:
        where, problem = _one_line(where), _one_line(problem)
        expected = _one_line(expected) if expected else expected
        msg = f"{where}: {problem}"
        if expected:
            msg += f" (expected {expected})"
        super().__init__(msg)
        self.where = where
        self.problem = problem
        self.expected = expected

    def __reduce__(self) -> tuple:
        """Rebuild from the three fields: Ray pickles errors raised in workers (the default rebuild from
        `args`, the formatted message alone, failed and hid the real error)."""
        return type(self), (self.where, self.problem, self.expected)


class DataError(InputError):
    """A data file or array is missing, truncated, malformed or out of range."""


class ConfigError(InputError):
    """A configuration key or value is unknown, of the wrong type or out of range."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt, or was written by another model or config."""
