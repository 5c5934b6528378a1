"""Driver-side concurrency: independent blocking calls (e.g. Ray Train fits) run in daemon threads."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


def run_concurrently(calls: Mapping[str, Callable[[], T]], limit: int) -> dict[str, T]:
    """Call each function in its own daemon thread, at most `limit` at once, in the mapping's order; results
    by key in that order. The first error is raised at once, without waiting for calls still running: daemon
    threads do not hold up the process's exit, so an interrupted or failed driver stops as a sequential one
    does (what the running calls write is atomic, and a rerun resumes them). `limit` 1 calls them one after
    the other in the caller's thread, where signal handlers (e.g. Ray Train's for Ctrl-C) can be installed."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if limit == 1:
        return {k: f() for k, f in calls.items()}
    done: queue.Queue[tuple[str, bool, object]] = queue.Queue()

    def call(key: str) -> None:
        try:
            done.put((key, True, calls[key]()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
            done.put((key, False, e))

    pending, running, results = list(calls), 0, {}
    while pending or running:
        while pending and running < limit:
            key = pending.pop(0)
            threading.Thread(target=call, args=(key,), name=f"call-{key}", daemon=True).start()
            running += 1
        key, ok, value = done.get()
        running -= 1
        if not ok:
            raise value  # type: ignore[misc]
        results[key] = value
    return {k: results[k] for k in calls}
