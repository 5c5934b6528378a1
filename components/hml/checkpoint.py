"""HML stage checkpoints: one torch file of tensors and plain values (loadable with
torch.load(weights_only=True)), written atomically, with a `meta` block checked on load so a
checkpoint of another model or config is refused with CheckpointError."""
from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from components.atomic import write_bytes
from components.errors import CheckpointError

FORMAT = "hmldiff.hml.stage.v1"


def save_checkpoint(path: str | Path, meta: Mapping[str, Any], state: Mapping[str, Any]) -> Path:
    """Atomically write {format, meta, state}; `state` holds tensors, dicts, lists and numbers."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "meta": dict(meta), "state": dict(state)}, buf)
    return write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, expect: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
    """(meta, state) of a checkpoint; CheckpointError if missing, corrupt, or meta differs from `expect`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(str(p), "checkpoint file not found", "a file written by save_checkpoint")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise CheckpointError(str(p), f"unreadable checkpoint: {e}", "a complete torch checkpoint") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(str(p), "not an HML stage checkpoint", f"format {FORMAT}")
    meta = blob["meta"]
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise CheckpointError(str(p), f"written for {key}={meta.get(key)!r}",
                                  f"{key}={want!r} (a checkpoint of this model and config)")
    return meta, blob["state"]

