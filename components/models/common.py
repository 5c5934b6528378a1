"""Parts shared by the relation predictors: object encoder, pair heads, per-image grouping, skeleton."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.errors import ConfigError, InputError
from components.models.base import RelationPredictor, SGBatch
from components.models.frequency import FrequencyBias
from components.models.geometry import OBJECT_GEOMETRY_DIM, PAIR_GEOMETRY_DIM, object_geometry, pair_geometry

MODES = ("predcls", "sgcls", "sgdet")
OBJECT_MODES = ("sgcls", "sgdet")  # modes whose model predicts object labels


def check_object_labels(labels: torch.Tensor, num_objects: int, background: bool = False) -> None:
    """InputError unless every object label is in 1..num_objects (0..num_objects with `background`: SGDet's
    detections that match no GT object)."""
    low = 0 if background else 1
    if len(labels) and (int(labels.min()) < low or int(labels.max()) > num_objects):
        raise InputError("SGBatch.labels", "object label out of range", f"labels in [{low}, {num_objects}]")


class ObjectEncoder(nn.Module):
    """(N, hidden) object representation from visual feature, box geometry and, with `use_labels` (PredCls),
    the GT label's embedding; SGCls (`use_labels=False`) never reads the GT labels."""

    def __init__(self, num_objects: int, feature_dim: int, hidden_dim: int, embed_dim: int, dropout: float,
                 use_labels: bool = True) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_objects = num_objects
        self.label_embed = nn.Embedding(num_objects + 1, embed_dim) if use_labels else None
        label_dim = embed_dim if use_labels else 0
        self.net = nn.Sequential(
            nn.Linear(feature_dim + label_dim + OBJECT_GEOMETRY_DIM, hidden_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, batch: SGBatch) -> torch.Tensor:
        if batch.obj_features.shape[-1] != self.feature_dim:
            raise InputError("SGBatch.obj_features", f"feature dim {batch.obj_features.shape[-1]}",
                             f"dim {self.feature_dim} as the predictor was built with")
        geo = batch.derived("object_geometry", lambda: object_geometry(batch.boxes, batch.obj_to_img, batch.image_sizes))
        parts = [batch.obj_features.float(), geo]
        if self.label_embed is not None:
            check_object_labels(batch.labels, self.num_objects)
            parts.insert(1, self.label_embed(batch.labels))
        return self.net(torch.cat(parts, 1))


def predicted_labels(object_logits: torch.Tensor) -> torch.Tensor:
    """SGCls object labels: argmax over the object classes 1..C (column 0, background, never chosen)."""
    return object_logits[:, 1:].argmax(1) + 1


def image_groups(obj_to_img: torch.Tensor, num_images: int) -> list[torch.Tensor]:
    """Indices of the objects of each image that has objects, in batch order (empty images skipped)."""
    order = torch.argsort(obj_to_img, stable=True)
    counts = torch.bincount(obj_to_img, minlength=num_images).tolist()
    return [g for g in torch.split(order, counts) if len(g)]


def pad_by_image(x: torch.Tensor, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, H) padded per-image sequences of rows of `x` and a (B, L) bool mask, True = padding."""
    longest = max((len(g) for g in groups), default=0)
    out = x.new_zeros(len(groups), longest, x.shape[1])
    pad = torch.ones(len(groups), longest, dtype=torch.bool, device=x.device)
    for b, g in enumerate(groups):
        out[b, :len(g)] = x[g]
        pad[b, :len(g)] = False
    return out, pad


def unpad_by_image(y: torch.Tensor, groups: list[torch.Tensor], num_objects: int) -> torch.Tensor:
    """Inverse of `pad_by_image`: (N, H) rows back in the batch's object order."""
    out = y.new_zeros(num_objects, y.shape[-1])
    for b, g in enumerate(groups):
        out[g] = y[b, :len(g)]
    return out


class ProductPairHead(nn.Module):
    """MOTIFS-style pair representation: subject projection * object projection, fused with geometry."""

    def __init__(self, context_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.head = nn.Linear(context_dim, hidden_dim)
        self.tail = nn.Linear(context_dim, hidden_dim)
        self.fuse = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, ctx: torch.Tensor, pairs: torch.Tensor, geo: torch.Tensor) -> torch.Tensor:
        prod = self.head(ctx)[pairs[:, 0]] * self.tail(ctx)[pairs[:, 1]]
        return self.fuse(torch.cat([prod, geo], 1))


class ConcatPairHead(nn.Module):
    """Pairwise MLP over [subject representation, object representation, geometry].

    Computed factorised: the first layer's subject and object blocks multiply each object once (N rows), and
    only the geometry block each pair (R rows, R ~ 5N here), then the pair's rows are gathered and summed:
    the same function as the layer on the concatenation (equal to float rounding, tested) and the same
    parameters, at about a third of its matmul work."""

    def __init__(self, context_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.net = nn.Sequential(nn.Linear(2 * context_dim + hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, ctx: torch.Tensor, pairs: torch.Tensor, geo: torch.Tensor) -> torch.Tensor:
        layer, c = self.net[0], self.context_dim
        w = layer.weight
        both = F.linear(ctx, torch.cat([w[:, :c], w[:, c:2 * c]], 0))  # (N, 2H): subject and object blocks
        h = w.shape[0]
        pre = both[pairs[:, 0], :h] + both[pairs[:, 1], h:] + F.linear(geo, w[:, 2 * c:], layer.bias)
        return self.net[2](self.net[1](pre))


class PairPredictor(RelationPredictor):
    """Skeleton: encode objects -> object context -> edge context (subclasses override either; both default
    to the identity) -> pair head (subclass sets `pair_head`: (ctx, pairs, geometry) -> (R, hidden)) ->
    logits + frequency bias.

    `mode="predcls"`: GT object labels feed the encoder, the edge context and the frequency bias.
    `mode="sgcls"`: the GT labels are never read; an object classifier over each encoded object beside its
    object context (MOTIFS decodes labels from its object LSTM; the encoding beside it is a skip path) gives
    `object_logits` (N, num_objects + 1; column 0 unused), set by every forward, whose argmax labels
    (`predicted_labels`) take the GT labels' place in the edge context and the frequency bias.
    `mode="sgdet"`: as SGCls, over a detector's boxes (components/data/detections.py); the object classifier
    also learns background (label 0) for detections that match no GT object.
    `object_context_dim`: width of the object context (0: the subclass has none, the classifier reads the
    encoding alone)."""

    pair_head: nn.Module

    def __init__(self, num_objects: int, num_predicates: int, feature_dim: int, hidden_dim: int,
                 freq_bias: np.ndarray | None, embed_dim: int, dropout: float, mode: str = "predcls",
                 object_context_dim: int = 0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError("predictor mode", f"{mode!r}", f"one of {MODES}")
        for name, v in (("num_objects", num_objects), ("num_predicates", num_predicates),
                        ("feature_dim", feature_dim), ("hidden_dim", hidden_dim)):
            if int(v) < 1:
                raise InputError(name, f"{v}", "a positive integer")
        self.num_objects = num_objects
        self.num_predicates = num_predicates
        self.mode = mode
        self.encoder = ObjectEncoder(num_objects, feature_dim, hidden_dim, embed_dim, dropout,
                                     use_labels=mode == "predcls")
        self.has_object_context = object_context_dim > 0
        self.object_classifier = (nn.Linear(hidden_dim + object_context_dim, num_objects + 1)
                                  if mode in OBJECT_MODES else None)
        self.object_logits: torch.Tensor | None = None
        self.geometry = nn.Sequential(nn.Linear(PAIR_GEOMETRY_DIM, hidden_dim), nn.ReLU())
        self.classifier = nn.Linear(hidden_dim, num_predicates + 1)
        self.freq_bias: FrequencyBias | None = None
        if freq_bias is not None:
            want = (num_objects + 1, num_objects + 1, num_predicates + 1)
            if tuple(np.shape(freq_bias)) != want:
                raise InputError("freq_bias", f"shape {tuple(np.shape(freq_bias))}", f"shape {want}")
            self.freq_bias = FrequencyBias(freq_bias)

    def __getstate__(self) -> dict:
        """State for copy/pickle without `object_logits`: the last forward's output (with its autograd graph,
        which deepcopy refuses) is not part of the model."""
        return {**self.__dict__, "object_logits": None}

    def object_context(self, batch: SGBatch, x: torch.Tensor) -> torch.Tensor:
        """(N, object_context_dim) objects in the context of their image, from encoded objects `x` (N, hidden)
        (the identity where a subclass has no object context)."""
        return x

    def edge_context(self, batch: SGBatch, obj_ctx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, H') representations the pair head reads (`labels`: GT in PredCls, predicted in SGCls)."""
        return obj_ctx

    def forward(self, batch: SGBatch) -> torch.Tensor:
        x = self.encoder(batch)
        obj_ctx = self.object_context(batch, x)
        labels = batch.labels
        if self.object_classifier is not None:
            self.object_logits = self.object_classifier(torch.cat([x, obj_ctx], 1) if self.has_object_context else x)
            labels = predicted_labels(self.object_logits)
        ctx = self.edge_context(batch, obj_ctx, labels)
        geo = self.geometry(batch.derived("pair_geometry", lambda: pair_geometry(
            batch.boxes, batch.obj_to_img, batch.image_sizes, batch.pairs)))
        logits = self.classifier(self.pair_head(ctx, batch.pairs, geo))
        if self.freq_bias is not None:
            logits = logits + self.freq_bias(labels[batch.pairs[:, 0]], labels[batch.pairs[:, 1]])
        return logits
