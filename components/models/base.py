"""The interface every relation predictor implements, so HML is one strategy over many SGG models.

A batch holds several images flattened: objects carry `obj_to_img`, candidate pairs carry global
object indices. Candidate pairs (foreground + sampled background) are chosen ONCE per step by the
caller (`components.models.pairs`) and the same batch is fed to the frozen previous-stage model and
the new model, so CR compares the two models on identical pairs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


@dataclass
class SGBatch:
    """Objects and candidate pairs of a set of images (PredCls: GT boxes and labels given)."""

    obj_features: torch.Tensor  # (N, D) float
    boxes: torch.Tensor  # (N, 4) xyxy in image pixels
    labels: torch.Tensor  # (N,) long, 1..C_obj
    obj_to_img: torch.Tensor  # (N,) long, image index in the batch
    image_sizes: torch.Tensor  # (B, 2) float (width, height)
    pairs: torch.Tensor  # (R, 2) long, global object indices (subject, object)
    pair_to_img: torch.Tensor  # (R,) long
    pair_labels: torch.Tensor  # (R,) long, predicate 0..C_pred (0 = background), -1 = ignore

    def to(self, device: torch.device | str) -> SGBatch:
        return SGBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def derived(self, name: str, compute: Callable[[], T]) -> T:
        """`compute()` once per batch, then the stored tensor: weight-free values of the batch (box geometry)
        shared by every model that sees it, e.g. HML's frozen previous-stage model and the new one. A batch
        is never mutated after construction, so the stored value cannot go stale."""
        cache = self.__dict__.setdefault("_derived", {})
        if name not in cache:
            cache[name] = compute()
        return cache[name]

    @property
    def num_images(self) -> int:
        return int(self.image_sizes.shape[0])


class RelationPredictor(nn.Module):
    """Maps an SGBatch to predicate logits of shape (R, num_predicates + 1); column 0 = background."""

    num_predicates: int

    def forward(self, batch: SGBatch) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def relation_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters regularised by MR: every trainable one except the frequency-bias table.

        The table (a learnable prior initialised from label-pair counts, ~94% of the MLP predictor's
        parameters) is left out: its rows are per object-pair statistics, not shared features, and
        regularising it made a stage-2 step cost ~2x a CE step (benchmarks/bench_hml_step.py).
        """
        from components.models.frequency import FrequencyBias

        prior = {id(p) for m in self.modules() if isinstance(m, FrequencyBias) for p in m.parameters()}
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and id(p) not in prior]
