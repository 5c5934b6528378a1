"""Curriculum for fine-tuning on generated samples: easy -> hard by the entropy of the hardness vector.

A hardness vector (distances to K-means centres, L1-normalised) with low entropy is dominated by a few
far centres, i.e. the triplet sits close to some centres (a typical, "easy" condition); a flat vector
(high entropy) is far from everything alike. Samples are split at the median entropy: the easy half is
seen first, then the hard half (each half shuffled by the epoch's generator).
"""
from __future__ import annotations

import numpy as np

from components.errors import InputError


def hardness_entropy(hardness: np.ndarray) -> np.ndarray:
    """(N,) Shannon entropy (nats) of each row normalised to sum 1 (scale-free: rescaled rows give the same value)."""
    h = np.asarray(hardness, np.float64)
    if h.ndim != 2 or (h < 0).any():
        raise InputError("hardness", f"shape {h.shape} or negative entries", "(N, K) non-negative vectors")
    p = h / np.maximum(h.sum(1, keepdims=True), 1e-12)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)


def curriculum_order(hardness: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Permutation of samples: entropy <= median first (easy), then the rest; shuffled within halves with `rng`."""
    ent = hardness_entropy(hardness)
    easy = np.flatnonzero(ent <= np.median(ent)) if len(ent) else np.zeros(0, np.int64)
    hard = np.setdiff1d(np.arange(len(ent)), easy)
    if rng is not None:
        easy, hard = rng.permutation(easy), rng.permutation(hard)
    return np.concatenate([easy, hard]).astype(np.int64)
