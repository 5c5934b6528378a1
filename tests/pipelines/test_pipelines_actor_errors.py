"""Project errors raised in Ray Data actors reach the driver as themselves (type and message), on a real
local Ray; any other actor error stays Ray's."""
import logging
import pickle

import pytest
import ray.data
from ray.exceptions import RayTaskError

from components.errors import ConfigError, DataError
from pipelines.actor_errors import (
    RAY_DATA_TASK_ERROR_LOGGER,
    ActorInputError,
    carry_input_errors,
    input_errors_raised,
    wrapped_input_errors,
)


class _Records(logging.Handler):
    """The messages logged to Ray Data's logger of failed-task lines while installed."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def ray_data_error_lines():
    log, handler = logging.getLogger(RAY_DATA_TASK_ERROR_LOGGER), _Records()
    log.addHandler(handler)
    yield handler.messages
    log.removeHandler(handler)


def _consume(error: Exception, carry: bool = True) -> list[int]:
    """Map 4 items through a 2-actor pool whose actors raise `error` on item 2 (inside `wrapped_input_errors`).
    The actor class is local, so Ray pickles it by value (a test module is not importable in Ray's workers)."""

    class FailsOnItem:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def __call__(self, batch: dict) -> dict:
            with wrapped_input_errors():
                if 2 in batch["x"]:
                    raise self.error
            return batch

    ds = ray.data.from_items([{"x": i} for i in range(4)], override_num_blocks=4)
    ds = (carry_input_errors(ds) if carry else ds).map_batches(
        FailsOnItem, fn_constructor_kwargs={"error": error}, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
    with input_errors_raised():
        return [int(x) for b in ds.iter_batches(batch_size=None) for x in b["x"]]


def test_actor_input_error_keeps_the_wrapped_error_through_pickle():
    wrapped = pickle.loads(pickle.dumps(ActorInputError(ConfigError("k", "bad", "good"))))
    assert type(wrapped.error) is ConfigError and str(wrapped.error) == "k: bad (expected good)"


def test_wrapped_input_errors_wraps_project_errors_only():
    with pytest.raises(ActorInputError) as err, wrapped_input_errors():
        raise DataError("f.parquet", "truncated")
    assert type(err.value.error) is DataError
    with pytest.raises(KeyError), wrapped_input_errors():
        raise KeyError("x")


def test_a_data_error_in_an_actor_is_raised_in_the_driver_as_itself(ray_local, ray_data_error_lines):
    with pytest.raises(DataError) as err:
        _consume(DataError("shard-2.parquet", "checksum differs", "the manifest's sha256"))
    assert type(err.value) is DataError
    assert str(err.value) == "shard-2.parquet: checksum differs (expected the manifest's sha256)"
    assert ray_data_error_lines == []  # the one clear line only, not Ray Data's "exception ... from a task" too


def test_without_carrying_ray_data_wraps_it_and_other_errors_stay_rays(ray_local, ray_data_error_lines):
    with pytest.raises(RayTaskError) as err:  # the wrapper Ray Data puts around it loses the payload
        _consume(DataError("shard-2.parquet", "checksum differs"), carry=False)
    assert not isinstance(err.value, DataError)
    with pytest.raises(RayTaskError) as err:  # not a project error: Ray's own task error, untouched
        _consume(ZeroDivisionError("boom"))
    assert isinstance(err.value, ZeroDivisionError)
    assert len(ray_data_error_lines) == 2  # Ray Data still logs its own line for errors that are not ours
    assert all("An exception was raised from a task of operator" in m for m in ray_data_error_lines)
