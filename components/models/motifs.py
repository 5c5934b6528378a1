"""MOTIFS-style predictor (Zellers et al. 2018): BiLSTM object and edge contexts over objects ordered left
to right by box x-centre, pair = subject head * object tail (+ geometry). SGCls decodes object labels from
the object context, as MOTIFS does."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from components.models.base import SGBatch
from components.models.common import PairPredictor, ProductPairHead, image_groups


class MotifsPredictor(PairPredictor):
    """Object context BiLSTM -> edge context BiLSTM (with label embeddings) -> product pair head."""

    def __init__(self, num_objects: int, num_predicates: int, feature_dim: int, hidden_dim: int = 128,
                 freq_bias: np.ndarray | None = None, embed_dim: int = 32, dropout: float = 0.1,
                 mode: str = "predcls") -> None:
        super().__init__(num_objects, num_predicates, feature_dim, hidden_dim, freq_bias, embed_dim, dropout, mode,
                         object_context_dim=2 * hidden_dim)
        self.obj_rnn = nn.LSTM(hidden_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.edge_embed = nn.Embedding(num_objects + 1, embed_dim)
        self.edge_rnn = nn.LSTM(2 * hidden_dim + embed_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.pair_head = ProductPairHead(2 * hidden_dim, hidden_dim, dropout)

    @staticmethod
    def _run(rnn: nn.LSTM, x: torch.Tensor, orders: list[torch.Tensor]) -> torch.Tensor:
        """Run `rnn` over each image's objects in `orders`; rows returned in batch order."""
        out = x.new_zeros(x.shape[0], 2 * rnn.hidden_size)
        if not orders:
            return out
        packed = pack_sequence([x[o] for o in orders], enforce_sorted=False)
        padded, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True)
        for b, o in enumerate(orders):
            out[o] = padded[b, :len(o)]
        return out

    @staticmethod
    def _orders(batch: SGBatch) -> list[torch.Tensor]:
        """Each image's objects left to right by box x-centre (derived once per batch)."""
        def build() -> list[torch.Tensor]:
            xc = (batch.boxes[:, 0] + batch.boxes[:, 2]) / 2
            return [g[torch.argsort(xc[g], stable=True)] for g in image_groups(batch.obj_to_img, batch.num_images)]
        return batch.derived("left_to_right", build)

    def object_context(self, batch: SGBatch, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.obj_rnn, x, self._orders(batch))

    def edge_context(self, batch: SGBatch, obj_ctx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._run(self.edge_rnn, torch.cat([obj_ctx, self.edge_embed(labels)], 1), self._orders(batch))
