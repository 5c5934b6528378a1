"""Build relation predictors by name; each model records its build spec for checkpoints."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from components.errors import ConfigError
from components.models.base import RelationPredictor
from components.models.gnn import GNNPredictor
from components.models.mlp import MLPPredictor
from components.models.motifs import MotifsPredictor
from components.models.transformer import TransformerPredictor

_BUILDERS: dict[str, Callable[..., RelationPredictor]] = {
    "mlp": MLPPredictor,
    "motifs": MotifsPredictor,
    "transformer": TransformerPredictor,
    "gnn": GNNPredictor,
}
PREDICTORS: tuple[str, ...] = tuple(_BUILDERS)
# Arguments build_predictor itself passes to every builder (never options).
_COMMON = ("num_objects", "num_predicates", "feature_dim", "hidden_dim", "freq_bias", "mode")


def mode_fields(mode: str) -> dict[str, str]:
    """`{"mode": mode}` for SGCls, `{}` for PredCls: specs, hashes and cache keys made before SGCls existed
    (PredCls only) stay valid."""
    return {"mode": mode} if mode != "predcls" else {}


def _check_options(name: str, options: dict[str, Any]) -> None:
    """ConfigError for options `name` does not take, checked up front: a TypeError inside a builder is a bug."""
    accepted = set(inspect.signature(_BUILDERS[name]).parameters) - set(_COMMON)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"predictor {name!r} options", f"unknown options {unknown}",
                          f"options among {sorted(accepted)}")


def build_predictor(name: str, num_objects: int, num_predicates: int, feature_dim: int,
                    freq_bias: np.ndarray | None = None, hidden_dim: int = 128, mode: str = "predcls",
                    **kw: Any) -> RelationPredictor:
    """A fresh predictor `name` (one of PREDICTORS) for `mode` "predcls", "sgcls" or "sgdet"; `model.build_spec` holds
    what rebuilds it (`mode_fields`)."""
    if name not in _BUILDERS:
        raise ConfigError("predictor name", f"unknown predictor {name!r}", f"one of {PREDICTORS}")
    _check_options(name, kw)
    model = _BUILDERS[name](num_objects=num_objects, num_predicates=num_predicates, feature_dim=feature_dim,
                            hidden_dim=hidden_dim, freq_bias=freq_bias, mode=mode, **kw)
    model.build_spec = {"name": name, "num_objects": int(num_objects), "num_predicates": int(num_predicates),
                        "feature_dim": int(feature_dim), "hidden_dim": int(hidden_dim),
                        "freq_bias": freq_bias is not None, **mode_fields(mode), **kw}
    return model
