"""Content-addressed stages: complete ones are skipped, a failed one is not marked, config or code changes rerun."""
import numpy as np
import pytest

from components.code_version import code_fingerprint
from components.stages import MARKER, StageCache, arrays_hash


def test_skip_resume_and_invalidate(tmp_path):
    calls = []

    def work(tag):
        def fn(path):
            calls.append(tag)
            (path / "out.txt").write_text(tag)
            return {"tag": tag}
        return fn

    cache = StageCache(tmp_path)
    a = cache.run("data", {"n": 1}, work("a"))
    b = cache.run("train", {"lr": 0.1}, work("b"), upstream=[a])
    assert not a.cached and not b.cached and calls == ["a", "b"]
    a2 = cache.run("data", {"n": 1}, work("a"))
    b2 = cache.run("train", {"lr": 0.1}, work("b"), upstream=[a2])
    assert a2.cached and b2.cached and b2.result == {"tag": "b"} and calls == ["a", "b"]
    a3 = cache.run("data", {"n": 2}, work("a3"))
    b3 = cache.run("train", {"lr": 0.1}, work("b3"), upstream=[a3])
    assert not b3.cached and b3.key != b.key and calls[-2:] == ["a3", "b3"]


def test_other_source_code_recomputes_every_stage(tmp_path):
    """A stage completed by other code (an edited loss, a pulled fix) is never reused, even when its outputs
    would still load; the same code reuses it. The default code version is this checkout's fingerprint."""
    calls = []

    def fn(path):
        calls.append(path.name)
        return {}

    old = StageCache(tmp_path, code="0123456789ab")
    a = old.run("data", {"n": 1}, fn)
    b = old.run("train", {"lr": 0.1}, fn, upstream=[a])
    new = StageCache(tmp_path)
    assert new.code == code_fingerprint() != old.code
    a2 = new.run("data", {"n": 1}, fn)
    b2 = new.run("train", {"lr": 0.1}, fn, upstream=[a2])
    assert not a2.cached and not b2.cached and len(calls) == 4 and {a2.key, b2.key}.isdisjoint({a.key, b.key})
    assert StageCache(tmp_path, code="0123456789ab").run("train", {"lr": 0.1}, fn, upstream=[a]).cached
    assert len(calls) == 4


def test_failed_stage_is_not_marked_and_reuses_its_dir(tmp_path):
    cache = StageCache(tmp_path)

    def boom(path):
        (path / "partial").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.run("s", {}, boom)
    (stage_dir,) = list(tmp_path.iterdir())
    assert not (stage_dir / MARKER).exists()
    seen = {}

    def resume(path):
        seen["partial"] = (path / "partial").exists()
        return {}

    res = cache.run("s", {}, resume)
    assert seen["partial"] and res.path == stage_dir and (stage_dir / MARKER).exists()


def test_arrays_hash_changes_with_any_value_dtype_shape_or_name():
    a = {"x": np.arange(6, dtype=np.float32), "m": None}
    key = arrays_hash(a)
    assert arrays_hash({"m": None, "x": np.arange(6, dtype=np.float32)}) == key  # order of names is irrelevant
    assert arrays_hash({"x": np.arange(6, dtype=np.float32)[::-1][::-1].copy(), "m": None}) == key
    changed = [{"x": np.arange(6, dtype=np.float32) + np.eye(1, 6, 5, dtype=np.float32)[0], "m": None},
               {"x": np.arange(6, dtype=np.float64), "m": None},
               {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "m": None},
               {"y": np.arange(6, dtype=np.float32), "m": None},
               {"x": np.arange(6, dtype=np.float32), "m": np.zeros(0)}]
    assert len({arrays_hash(c) for c in changed} | {key}) == len(changed) + 1
