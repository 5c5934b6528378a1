"""Ray Train's checkpoint registry as a run directory shows it, and the worker-kill hook that tests of
resumption (HML stages, diffusion training) put into a train loop through its config."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


def registered_checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the checkpoints Ray Train has registered for the TorchTrainer run in `run_dir`
    (`storage_path/name`). A reported checkpoint's directory appears before its registration, and only a
    registered checkpoint is restored after a failure. [] while the snapshot is missing or being written."""
    try:
        snapshot = json.loads((Path(run_dir) / "checkpoint_manager_snapshot.json").read_text())
        return [int(r["metrics"]["step"]) for r in snapshot["checkpoint_results"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def kill_after_checkpoint(fault: dict, run_dir: str, checkpoint_every: int) -> None:
    """Test hook: SIGKILL this worker process, as on a lost node, once Ray Train has registered the last
    checkpoint reported before step `fault["at_step"]` (or after `fault["timeout_s"]`, default 300 s). The
    marker file, written first, keeps a restarted worker from failing again; it ends up naming the
    checkpoint steps registered at the kill."""
    marker = Path(fault["marker"])
    marker.write_text("killed once\n")
    want = (fault["at_step"] - 1) // checkpoint_every * checkpoint_every  # 0: no checkpoint to wait for
    deadline = time.monotonic() + fault.get("timeout_s", 300.0)
    while want and want not in registered_checkpoint_steps(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    marker.write_text(json.dumps({"registered_steps": registered_checkpoint_steps(run_dir)}) + "\n")
    os.kill(os.getpid(), signal.SIGKILL)
