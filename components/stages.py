"""Content-addressed pipeline stages: a stage's directory is named by the hash of its config and of
its upstream stages' keys and of the project's source code, and is complete only once its `_DONE.json` marker (written atomically,
holding the stage's result) exists. A rerun skips complete stages; an interrupted stage reuses its
directory so that checkpoint-based resumption (Ray Train) can continue where it stopped; a changed
config gets a new key, so only what depends on it is recomputed; changed code (any .py file of components/ or
pipelines/) gets new keys for every stage, so no result of other code is reused."""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import ensure_writable_dir, write_json
from components.code_version import code_fingerprint
from components.config import config_hash

MARKER = "_DONE.json"


def arrays_hash(arrays: Mapping[str, np.ndarray | None], length: int = 12) -> str:
    """Content hash of named arrays (name, dtype, shape and bytes of each; None counts by name): the key of an
    output computed from them, so that any change of the data gives a new key instead of a stale reuse."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(name.encode() + b"\0")
        if a is None:
            h.update(b"none\0")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}\0".encode())
        h.update(a.data)
    return h.hexdigest()[:length]


@dataclass
class StageResult:
    """Outcome of one stage: its key, directory, result mapping, whether it was cached, and wall time."""

    name: str
    key: str
    path: Path
    result: dict
    cached: bool
    seconds: float


class StageCache:
    """Runs named stages under `root`, each in `<root>/<name>-<key>/`, skipping complete ones.
    `code` is the source version keyed in (default: this checkout's `code_fingerprint()`)."""

    def __init__(self, root: str | Path, code: str | None = None) -> None:
        self.root = ensure_writable_dir(root)
        self.code = code_fingerprint() if code is None else code

    def key(self, name: str, config: Any, upstream: list[StageResult] | None = None) -> str:
        return config_hash({"stage": name, "config": config, "code": self.code,
                            "upstream": [u.key for u in upstream or []]})

    def run(self, name: str, config: Any, fn: Callable[[Path], dict],
            upstream: list[StageResult] | None = None) -> StageResult:
        """Run `fn(stage_dir) -> result` unless the stage with this key is already complete."""
        key = self.key(name, config, upstream)
        path = ensure_writable_dir(self.root / f"{name}-{key}")
        marker = path / MARKER
        if marker.is_file():
            done = json.loads(marker.read_text())
            return StageResult(name, key, path, done["result"], True, float(done.get("seconds", 0.0)))
        t0 = time.perf_counter()
        result = fn(path)
        seconds = time.perf_counter() - t0
        write_json(marker, {"stage": name, "key": key, "code": self.code, "seconds": seconds, "result": result})
        return StageResult(name, key, path, result, False, seconds)
