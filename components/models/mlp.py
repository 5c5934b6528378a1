"""Pairwise MLP predictor: no object context, one MLP over [subject, object, pair geometry] (fast baseline)."""
from __future__ import annotations

import numpy as np

from components.models.common import ConcatPairHead, PairPredictor


class MLPPredictor(PairPredictor):
    """Each pair scored from its two encoded objects (feature + label embedding + box) and its geometry."""

    def __init__(self, num_objects: int, num_predicates: int, feature_dim: int, hidden_dim: int = 128,
                 freq_bias: np.ndarray | None = None, embed_dim: int = 32, dropout: float = 0.1,
                 mode: str = "predcls") -> None:
        super().__init__(num_objects, num_predicates, feature_dim, hidden_dim, freq_bias, embed_dim, dropout, mode)
        self.pair_head = ConcatPairHead(hidden_dim, hidden_dim, dropout)
