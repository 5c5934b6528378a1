"""Transformer predictor: object context from a small nn.TransformerEncoder over each image's objects
(padding-masked), pair = subject head * object tail (+ geometry)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from components.errors import ConfigError
from components.models.base import SGBatch
from components.models.common import (
    PairPredictor,
    ProductPairHead,
    image_groups,
    pad_by_image,
    unpad_by_image,
)


class TransformerPredictor(PairPredictor):
    """Self-attention among the objects of one image, then the product pair head."""

    def __init__(self, num_objects: int, num_predicates: int, feature_dim: int, hidden_dim: int = 128,
                 freq_bias: np.ndarray | None = None, embed_dim: int = 32, dropout: float = 0.1,
                 num_layers: int = 2, num_heads: int = 4, mode: str = "predcls") -> None:
        super().__init__(num_objects, num_predicates, feature_dim, hidden_dim, freq_bias, embed_dim, dropout, mode,
                         object_context_dim=hidden_dim)
        if num_heads < 1 or hidden_dim % num_heads:
            raise ConfigError("num_heads", f"{num_heads} does not divide hidden_dim {hidden_dim}",
                              "a positive divisor of hidden_dim")
        layer = nn.TransformerEncoderLayer(hidden_dim, num_heads, dim_feedforward=2 * hidden_dim,
                                           dropout=dropout, batch_first=True)
        self.encoder_ctx = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pair_head = ProductPairHead(hidden_dim, hidden_dim, dropout)

    def object_context(self, batch: SGBatch, x: torch.Tensor) -> torch.Tensor:
        groups = image_groups(batch.obj_to_img, batch.num_images)
        if not groups:
            return x
        padded, pad = pad_by_image(x, groups)
        return unpad_by_image(self.encoder_ctx(padded, src_key_padding_mask=pad), groups, x.shape[0])
