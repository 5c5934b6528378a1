"""Hardness vectors (DiffAugment): distances of a triplet's text embedding to K-means centres, L1-normalised.

The paper fits K = 1200 centres on all training triplets' text embeddings; our default K is smaller
(distinct planted triplets number in the low thousands). L1-normalised entries are ~1/K, far below the
scale of the other conditions, so `hardness` multiplies them by K (entries then average exactly 1);
pass `rescale=False` for the paper's raw vector.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics.pairwise import euclidean_distances

from components.errors import InputError


@dataclass
class HardnessModel:
    """Fitted K-means centres (K, E) over training triplet embeddings."""

    centres: np.ndarray
    rescale: bool = True

    @property
    def k(self) -> int:
        return len(self.centres)

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) hardness: Euclidean distances to the centres divided by their sum (x K when rescaled)."""
        x = np.asarray(embeddings, np.float64)
        if x.ndim != 2 or x.shape[1] != self.centres.shape[1]:
            raise InputError("embeddings", f"shape {x.shape}", f"(N, {self.centres.shape[1]})")
        d = euclidean_distances(x, self.centres)
        h = d / np.maximum(d.sum(1, keepdims=True), 1e-12)
        return (h * self.k if self.rescale else h).astype(np.float32)


def fit_hardness(embeddings: np.ndarray, k: int = 64, seed: int = 0, rescale: bool = True) -> HardnessModel:
    """K-means (sklearn, k-means++, n_init=3) on training triplet embeddings; K capped by distinct rows."""
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InputError("embeddings", f"shape {x.shape}", "(N >= 2, E) training triplet embeddings")
    if k < 1:
        raise InputError("hardness k", f"is {k}", "a positive number of centres")
    k = min(k, len(np.unique(x, axis=0)))
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
    return HardnessModel(km.cluster_centers_, rescale)
