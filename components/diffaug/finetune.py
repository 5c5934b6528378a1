"""Training, fine-tuning, prediction and LTVRR evaluation of the relation classifier (plain torch, seeded).

Loss per batch = subject + object + relation terms, each CE or WCE (weights from training counts), plus
optional VilHub on relation logits and RelMix on tail relations. `finetune_classifier` continues training
an existing model (DiffAugment step 4: paper 10 epochs, batch 256) on generated and optionally real
samples; with `curriculum` every epoch visits the easy half (low hardness entropy) before the hard half.
Everything random (init aside) follows `seed`: shuffles, dropout and RelMix draws.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from components.diffaug.augment import frequency_bands
from components.diffaug.curriculum import curriculum_order
from components.diffaug.losses import relmix_loss, vilhub_loss, wce_weights
from components.errors import InputError
from components.evaluation.ltvrr import ltvrr_report
from components.evaluation.predictions import save_ltvrr_predictions
from components.models.vrr_classifier import VRRClassifier
from components.optim import adamw

FEATURES = ("subject_feature", "object_feature", "union_feature")
LABELS = ("subject", "object", "predicate")


@dataclass
class RelationSet:
    """Relation samples: features (N, D) x3, 0-based labels (N,) x3, optional hardness (N, K)."""

    subject_feature: np.ndarray
    object_feature: np.ndarray
    union_feature: np.ndarray
    subject: np.ndarray
    object: np.ndarray
    predicate: np.ndarray
    hardness: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.predicate)
        for name in FEATURES + LABELS:
            if len(getattr(self, name)) != n:
                raise InputError(f"RelationSet.{name}", f"{len(getattr(self, name))} rows", f"{n} rows like predicate")
        if self.hardness is not None and len(self.hardness) != n:
            raise InputError("RelationSet.hardness", f"{len(self.hardness)} rows", f"{n} rows")

    def __len__(self) -> int:
        return len(self.predicate)

    @classmethod
    def from_arrays(cls, arrays: dict, hardness: np.ndarray | None = None) -> RelationSet:
        """From `relation_arrays(table)` (store columns)."""
        return cls(*(np.asarray(arrays[k], np.float32) for k in FEATURES),
                   *(np.asarray(arrays[k], np.int64) for k in LABELS), hardness)

    def subset(self, idx: np.ndarray) -> RelationSet:
        """Rows `idx`."""
        return RelationSet(*(getattr(self, k)[idx] for k in FEATURES + LABELS),
                           None if self.hardness is None else self.hardness[idx])

    @staticmethod
    def concat(parts: list[RelationSet]) -> RelationSet:
        """Rows of all parts (hardness kept only when every part has it)."""
        hard = None if any(p.hardness is None for p in parts) else np.concatenate([p.hardness for p in parts])
        return RelationSet(*(np.concatenate([getattr(p, k) for p in parts]) for k in FEATURES + LABELS), hard)


@dataclass
class TrainConfig:
    """Optimisation and loss settings of classifier training / fine-tuning."""

    epochs: int = field(default=30, metadata={"range": (1, None)})
    batch_size: int = field(default=256, metadata={"range": (1, None)})
    lr: float = field(default=1e-3, metadata={"range": (0.0, 1.0)})
    weight_decay: float = field(default=1e-4, metadata={"range": (0.0, 1.0)})
    loss: str = field(default="ce", metadata={"choices": ("ce", "wce")})
    vilhub: float = field(default=0.0, metadata={"range": (0.0, None)})
    relmix: bool = False
    curriculum: bool = False
    seed: int = 0


def _tensor(data: RelationSet, idx: np.ndarray, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
    return (*(torch.from_numpy(getattr(data, k)[idx]).to(device) for k in FEATURES),
            *(torch.from_numpy(getattr(data, k)[idx]).to(device) for k in LABELS))


def train_classifier(model: VRRClassifier, data: RelationSet, cfg: TrainConfig, obj_counts: np.ndarray,
                     rel_counts: np.ndarray, progress: bool = False, desc: str = "classifier") -> list[float]:
    """Train `model` in place on `data`, on the model's device; returns the mean loss of every epoch. Shuffling
    and RelMix draws stay on the CPU, so a seed gives the same batches on any device. `desc` labels the bar."""
    if len(data) == 0:
        raise InputError("training data", "is empty", "at least one relation sample")
    if cfg.curriculum and data.hardness is None:
        raise InputError("curriculum", "needs hardness vectors", "RelationSet.hardness for every sample")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = next(model.parameters()).device
    ow = wce_weights(obj_counts).to(device) if cfg.loss == "wce" else None
    rw = wce_weights(rel_counts).to(device) if cfg.loss == "wce" else None
    rel_tail = torch.from_numpy(np.isin(frequency_bands(np.asarray(rel_counts)), ["few"])).to(device)
    opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    history = []
    model.train()
    for _ in tqdm(range(cfg.epochs), desc=desc, disable=not progress, mininterval=2.0):
        order = curriculum_order(data.hardness, rng) if cfg.curriculum else rng.permutation(len(data))
        total, batches = 0.0, 0
        for lo in range(0, len(order), cfg.batch_size):
            sf, of, uf, s, o, p = _tensor(data, order[lo: lo + cfg.batch_size], device)
            emb = model.embed(sf, of, uf)
            rel_logits = model.logits_from(emb["relation"], "relation")
            loss = (F.cross_entropy(model.logits_from(emb["subject"], "subject"), s, weight=ow)
                    + F.cross_entropy(model.logits_from(emb["object"], "object"), o, weight=ow)
                    + F.cross_entropy(rel_logits, p, weight=rw))
            if cfg.vilhub > 0:
                loss = loss + vilhub_loss(rel_logits, cfg.vilhub)
            if cfg.relmix:
                loss = loss + relmix_loss(model, emb["relation"], p, rel_tail[p], gen, weight=rw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, batches = total + float(loss.item()), batches + 1
        history.append(total / batches)
    model.eval()
    return history


def finetune_config(epochs: int = 10, batch_size: int = 256, lr: float = 1e-4, curriculum: bool = False,
                    loss: str = "ce", seed: int = 0) -> TrainConfig:
    """The training config of DiffAugment's fine-tuning step (the paper: 10 epochs, batch 256)."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, curriculum=curriculum, seed=seed)


def finetune_classifier(model: VRRClassifier, data: RelationSet, obj_counts: np.ndarray, rel_counts: np.ndarray,
                        epochs: int = 10, batch_size: int = 256, lr: float = 1e-4, curriculum: bool = False,
                        loss: str = "ce", seed: int = 0, progress: bool = False) -> list[float]:
    """Continue training `model` on `data` (generated and/or real samples); DiffAugment step 4."""
    cfg = finetune_config(epochs, batch_size, lr, curriculum, loss, seed)
    return train_classifier(model, data, cfg, obj_counts, rel_counts, progress)


@torch.no_grad()
def predict_logits(model: VRRClassifier, data: RelationSet, batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Logits of every head for every sample (eval mode)."""
    model.eval()
    out: dict[str, list] = {"subject": [], "object": [], "relation": []}
    for lo in range(0, len(data), batch_size):
        sf, of, uf, *_ = _tensor(data, np.arange(lo, min(len(data), lo + batch_size)))
        for k, v in model(sf, of, uf).items():
            out[k].append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate_classifier(model: VRRClassifier, data: RelationSet, obj_counts: np.ndarray,
                        rel_counts: np.ndarray, predictions: str | Path | None = None) -> dict:
    """LTVRR report (percent): sbj_obj / rel per band and combined, on `data`; with `predictions`, the top-1
    predictions are also saved there (.npz that `pipelines/evaluate.py ltvrr` re-scores)."""
    pred = {k: v.argmax(1) for k, v in predict_logits(model, data).items()}
    oc = {i: int(c) for i, c in enumerate(obj_counts)}
    rc = {i: int(c) for i, c in enumerate(rel_counts)}
    if predictions is not None:
        save_ltvrr_predictions(predictions, data.subject, pred["subject"], data.object, pred["object"],
                               data.predicate, pred["relation"], oc, rc)
    return ltvrr_report(data.subject, pred["subject"], data.object, pred["object"], data.predicate,
                        pred["relation"], oc, rc)
