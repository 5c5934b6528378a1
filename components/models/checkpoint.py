"""Predictor checkpoints: safetensors weights plus the build spec and its hash, written atomically.

Loading rebuilds the model from the stored spec (`components.models.registry.build_predictor`), so a
checkpoint is self-describing; `expected` (a build spec) refuses one written by another model or config.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from components.atomic import atomic_path
from components.config import config_hash
from components.errors import CheckpointError, InputError
from components.models.base import RelationPredictor
from components.models.registry import build_predictor

FORMAT = "hmldiff.predictor/1"


def save_predictor(model: RelationPredictor, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write `model`'s weights, build spec, spec hash and JSON-able `extra` to `path`."""
    spec = getattr(model, "build_spec", None)
    if spec is None:
        raise InputError("model", "has no build_spec", "a predictor made by build_predictor")
    try:
        meta = {"format": FORMAT, "build_spec": json.dumps(spec, sort_keys=True),
                "config_hash": config_hash(spec), "extra": json.dumps(extra or {}, sort_keys=True)}
    except TypeError as e:
        raise InputError("checkpoint metadata", f"not JSON-serialisable: {e}", "plain JSON values") from e
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """{'build_spec', 'config_hash', 'extra'} of a checkpoint, checked for format and hash integrity."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(str(p), "checkpoint file not found", "a file written by save_predictor")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(str(p), f"unreadable or truncated safetensors file: {e}",
                              "a complete file written by save_predictor") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(str(p), f"format {meta.get('format')!r}", f"format {FORMAT!r}")
    missing = [k for k in ("build_spec", "config_hash", "extra") if k not in meta]
    if missing:
        raise CheckpointError(str(p), f"metadata misses keys {missing}", "metadata written by save_predictor")
    spec, extra = _json_metadata(p, meta, "build_spec"), _json_metadata(p, meta, "extra")
    if config_hash(spec) != meta["config_hash"]:
        raise CheckpointError(str(p), "stored config hash does not match its build spec (modified metadata)")
    return {"build_spec": spec, "config_hash": meta["config_hash"], "extra": extra}


def _json_metadata(path: Path, meta: dict[str, str], key: str) -> dict[str, Any]:
    """The JSON object stored under metadata `key`; CheckpointError naming the file and key when it is not one."""
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(str(path), f"metadata {key!r} is not valid JSON: {e}",
                              "a JSON object written by save_predictor") from e
    if not isinstance(value, dict):
        raise CheckpointError(str(path), f"metadata {key!r} is a JSON {type(value).__name__}",
                              "a JSON object written by save_predictor")
    return value


def load_predictor(path: str | Path, expected: dict[str, Any] | None = None) -> RelationPredictor:
    """Rebuild and load the predictor at `path`; if `expected` (a build spec) differs, name the mismatch."""
    info = checkpoint_info(path)
    spec = dict(info["build_spec"])
    if expected is not None and config_hash(expected) != info["config_hash"]:
        keys = sorted(set(spec) | set(expected))
        diff = [f"{k}: checkpoint {spec.get(k, '<absent>')!r} vs expected {expected.get(k, '<absent>')!r}"
                for k in keys if spec.get(k, "<absent>") != expected.get(k, "<absent>")]
        raise CheckpointError(str(path), f"written by predictor {spec.get('name')!r} with another config: "
                              + "; ".join(diff), f"predictor {expected.get('name')!r} with the expected config")
    name = spec.pop("name")
    has_freq = spec.pop("freq_bias")
    n_obj, n_pred = spec["num_objects"], spec["num_predicates"]
    fb = np.zeros((n_obj + 1, n_obj + 1, n_pred + 1), np.float32) if has_freq else None
    model = build_predictor(name, freq_bias=fb, **spec)
    with safe_open(str(path), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not iterable
    return load_predictor_state(model, state, path)


def load_predictor_state(model: RelationPredictor, state: Mapping[str, torch.Tensor], path: str | Path) -> RelationPredictor:
    """`model.load_state_dict(state)` (strict), or CheckpointError naming `path` when the weights do not fit,
    e.g. a cached stage of the same config written by an older version of the predictor's code."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(str(path), f"weights do not fit predictor {model.build_spec['name']!r}: {e}",
                              "weights of this predictor as this version builds it (a stale cached stage: "
                              "delete its directory to retrain it)") from e
    return model

