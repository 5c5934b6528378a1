"""run_concurrently: order, the concurrency limit, errors raised at once, daemon threads."""
import threading
import time

import pytest

from pipelines.threads import run_concurrently


def test_results_in_order_with_at_most_limit_running():
    lock, running, peak = threading.Lock(), [0], [0]

    def call(i):
        def f():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            return i * i
        return f

    calls = {f"k{i}": call(i) for i in range(5)}
    assert run_concurrently(calls, limit=2) == {f"k{i}": i * i for i in range(5)}
    assert list(run_concurrently(calls, limit=2)) == [f"k{i}" for i in range(5)]
    assert peak[0] == 2
    peak[0] = 0
    run_concurrently(calls, limit=1)
    assert peak[0] == 1


def test_first_error_is_raised_without_waiting_for_running_calls():
    release = threading.Event()
    started = []

    def slow():
        release.wait(30)
        return "late"

    def bad():
        raise KeyError("broken input")

    t0 = time.perf_counter()
    with pytest.raises(KeyError, match="broken input"):
        run_concurrently({"slow": slow, "bad": bad, "never": lambda: started.append(1)}, limit=2)
    assert time.perf_counter() - t0 < 5  # the slow call is still blocked: not waited for
    threads = [t for t in threading.enumerate() if t.name == "call-slow"]
    assert threads and all(t.daemon for t in threads)  # it cannot hold up the process's exit
    assert started == []  # nothing new starts after the error
    release.set()


def test_bad_limit():
    with pytest.raises(ValueError, match="limit"):
        run_concurrently({"a": lambda: 1}, limit=0)
