"""Message-passing predictor: one round of attention-weighted messages between the objects of an
image, the affinity of each ordered pair learned from both objects and their box geometry."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from components.models.base import SGBatch
from components.models.common import PairPredictor, ProductPairHead, image_groups
from components.models.geometry import PAIR_GEOMETRY_DIM, pair_geometry


def segment_softmax(scores: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Softmax of `scores` within each group of equal `index` (groups 0..size-1)."""
    mx = scores.new_full((size,), -torch.inf).scatter_reduce(0, index, scores, "amax", include_self=True)
    e = torch.exp(scores - mx[index])
    return e / scores.new_zeros(size).index_add(0, index, e)[index]


def _edges_and_geometry(batch: SGBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """All ordered object pairs i != j within each image and their pair geometry (None: no image has two objects)."""
    edges = [torch.cartesian_prod(g, g) for g in image_groups(batch.obj_to_img, batch.num_images) if len(g) > 1]
    if not edges:
        return None
    e = torch.cat(edges)
    e = e[e[:, 0] != e[:, 1]]
    return e, pair_geometry(batch.boxes, batch.obj_to_img, batch.image_sizes, e)


class GNNPredictor(PairPredictor):
    """h_i' = h_i + MLP([h_i, sum_j a_ij W h_j]), a_ij = softmax_j(MLP([h_i, h_j, geo_ij])); product pair head."""

    def __init__(self, num_objects: int, num_predicates: int, feature_dim: int, hidden_dim: int = 128,
                 freq_bias: np.ndarray | None = None, embed_dim: int = 32, dropout: float = 0.1,
                 mode: str = "predcls") -> None:
        super().__init__(num_objects, num_predicates, feature_dim, hidden_dim, freq_bias, embed_dim, dropout, mode,
                         object_context_dim=hidden_dim)
        self.affinity = nn.Sequential(nn.Linear(2 * hidden_dim + PAIR_GEOMETRY_DIM, hidden_dim), nn.ReLU(),
                                      nn.Linear(hidden_dim, 1))
        self.message = nn.Linear(hidden_dim, hidden_dim)
        self.update = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(hidden_dim)
        self.pair_head = ProductPairHead(hidden_dim, hidden_dim, dropout)

    def object_context(self, batch: SGBatch, x: torch.Tensor) -> torch.Tensor:
        edges_geo = batch.derived("gnn_edges", lambda: _edges_and_geometry(batch))
        msg = torch.zeros_like(x)
        if edges_geo is not None:
            e, geo = edges_geo
            score = self.affinity(torch.cat([x[e[:, 0]], x[e[:, 1]], geo], 1)).squeeze(1)
            alpha = segment_softmax(score, e[:, 0], x.shape[0])
            msg = msg.index_add(0, e[:, 0], alpha[:, None] * self.message(x)[e[:, 1]])
        return self.norm(x + self.update(torch.cat([x, msg], 1)))
