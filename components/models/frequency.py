"""MOTIFS-style frequency bias: log p(predicate | subject label, object label) from training graphs.

Background (column 0) is counted from every ordered pair of GT objects i != j without a GT relation.
This is our choice: MOTIFS (Scene-Graph-Benchmark's get_VG_statistics, must_overlap=True) counts
background only over pairs whose boxes overlap. The table is learnable, so only its initial values
differ. Counts are streamed image by image and smoothed additively.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from components.errors import InputError
from components.models.pairs import check_rel_indices


def frequency_bias(images_iterable: Iterable[dict[str, Any]], num_objects: int, num_predicates: int,
                   smoothing: float = 1.0) -> np.ndarray:
    """(C_obj+1, C_obj+1, C_pred+1) float32 log-distribution over predicates (0 = background) per label pair."""
    if smoothing <= 0:
        raise InputError("smoothing", f"{smoothing}", "a positive pseudo-count (log of zero otherwise)")
    counts = np.zeros((num_objects + 1, num_objects + 1, num_predicates + 1), dtype=np.float64)
    for k, img in enumerate(images_iterable):
        labels = np.asarray(img["labels"], dtype=np.int64).reshape(-1)
        rels = np.asarray(img["rels"], dtype=np.int64).reshape(-1, 3)
        n = len(labels)
        where = f"image {k} ({img.get('image_id', '?')})"
        if n and (labels.min() < 1 or labels.max() > num_objects):
            raise InputError(where, "object label out of range", f"labels in [1, {num_objects}]")
        if rels.size and (rels[:, 2].min() < 1 or rels[:, 2].max() > num_predicates):
            raise InputError(where, "predicate out of range", f"predicates in [1, {num_predicates}]")
        check_rel_indices(where, rels, n)
        np.add.at(counts, (labels[rels[:, 0]], labels[rels[:, 1]], rels[:, 2]), 1.0)
        related = np.zeros((n, n), dtype=bool)
        related[rels[:, 0], rels[:, 1]] = True
        np.fill_diagonal(related, True)
        si, oi = np.nonzero(~related)
        np.add.at(counts, (labels[si], labels[oi], 0), 1.0)
    counts += smoothing
    return np.log(counts / counts.sum(-1, keepdims=True)).astype(np.float32)


class FrequencyBias(nn.Module):
    """Learnable (C_obj+1)^2 x (C_pred+1) table initialised from `frequency_bias`, looked up per pair."""

    def __init__(self, table: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        t = torch.as_tensor(np.asarray(table, dtype=np.float32))
        if t.ndim != 3 or t.shape[0] != t.shape[1]:
            raise InputError("freq_bias", f"shape {tuple(t.shape)}", "(C_obj+1, C_obj+1, C_pred+1)")
        self.num_labels = int(t.shape[0])
        self.table = nn.Embedding(self.num_labels ** 2, int(t.shape[2]))
        with torch.no_grad():
            self.table.weight.copy_(t.reshape(-1, t.shape[2]))

    def forward(self, subj_labels: torch.Tensor, obj_labels: torch.Tensor) -> torch.Tensor:
        """(R, C_pred+1) bias for label pairs."""
        return self.table(subj_labels * self.num_labels + obj_labels)
