"""The CLI exit path: one `error:` line and exit 2 for a bad input, also when it was raised in a Ray task."""
import ray

from components.errors import DataError
from pipelines.cli import exit_code


def test_an_input_error_is_one_line_and_exit_2(capsys):
    def action():
        raise DataError("f.parquet", "truncated", "a complete file")

    assert exit_code(action) == 2
    assert capsys.readouterr().err == "error: f.parquet: truncated (expected a complete file)\n"
    assert exit_code(lambda: None) == 0


def test_an_input_error_raised_in_a_ray_task_prints_its_own_line(ray_local, capsys):
    @ray.remote(num_cpus=0.5)
    def bad_task():
        raise DataError("shard-3.parquet", "checksum differs", "the manifest's sha256")

    def action():
        ray.get(bad_task.remote())

    assert exit_code(action) == 2
    assert capsys.readouterr().err == "error: shard-3.parquet: checksum differs (expected the manifest's sha256)\n"
