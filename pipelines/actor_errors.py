"""Project errors raised inside Ray Data actors, carried to the driver with their type and message.

Ray Data wraps an exception of a map UDF in its own `UserCodeException`, and the original reaches the
driver only as text in a traceback. A UDF that raises `ActorInputError` around an `InputError` (DataError,
ConfigError, ...) on a dataset with `carry_input_errors` set reaches the driver whole: `input_errors_raised`
re-raises the project error itself, so a bad file is one clear line however many processes away it was read.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ray.exceptions import RayTaskError, UserCodeException

from components.errors import InputError

if TYPE_CHECKING:  # importing ray.data costs ~1.2 s: not at import time of a module that may not use it
    import ray.data


class ActorInputError(UserCodeException):
    """An `InputError` raised in an actor (as a `UserCodeException`, Ray Data logs it as an error of user code,
    not as an internal Ray error); `__reduce__` keeps the wrapped error across pickling."""

    def __init__(self, error: InputError) -> None:
        super().__init__(str(error))
        self.error = error

    def __reduce__(self) -> tuple:
        return type(self), (self.error,)


@contextmanager
def wrapped_input_errors() -> Iterator[None]:
    """In an actor: re-raise an `InputError` from the block as `ActorInputError`."""
    try:
        yield
    except InputError as e:
        raise ActorInputError(e) from None


def carry_input_errors(ds: ray.data.Dataset) -> ray.data.Dataset:
    """`ds` with its map UDFs' exceptions raised as they are, not wrapped (the wrapper drops their payload)."""
    ds.context.raise_original_map_exception = True
    return ds


# Where Ray Data logs 'An exception was raised from a task of operator "...". Dataset execution will now abort.'
# in the driver when a task fails, before it raises the task's error.
RAY_DATA_TASK_ERROR_LOGGER = "ray.data._internal.execution.streaming_executor_state"


class _HeldTaskErrorLines(logging.Filter):
    """Holds Ray Data's failed-task error lines back until the error is known (see `input_errors_raised`)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "An exception was raised from a task" in record.getMessage():
            self.held.append(record)
            return False
        return True


@contextmanager
def input_errors_raised() -> Iterator[None]:
    """In the driver, around consuming a dataset: an actor's `ActorInputError` becomes its project error, and
    Ray Data's own error line for that task is dropped (it said less, and suggested skipping the bad block);
    for any other error the line is logged as Ray Data would, before its error is raised."""
    log, hold = logging.getLogger(RAY_DATA_TASK_ERROR_LOGGER), _HeldTaskErrorLines()
    log.addFilter(hold)
    ours = False
    try:
        yield
    except RayTaskError as e:
        if isinstance(e.cause, ActorInputError):
            ours = True
            raise e.cause.error from None
        raise
    finally:
        log.removeFilter(hold)
        if not ours:
            for record in hold.held:
                log.handle(record)
