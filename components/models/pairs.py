"""Candidate subject-object pairs for PredCls: per-step sampling for training, all pairs for evaluation.

`sample_pairs` is called ONCE per training step and its SGBatch is fed to both the frozen
previous-stage model and the new model (HML's CR term must compare the two on identical pairs).
Foreground = GT-related ordered pairs (one of a pair's GT predicates drawn at random per step);
background = other ordered pairs i != j, drawn without replacement, label 0. With a `label_map`
(HML stages) a pair whose drawn predicate maps to -1 stays in the batch with label -1 (ignored by
the loss, still seen by CR); a pair with several GT predicates draws among those the stage keeps.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from components.errors import InputError
from components.models.base import SGBatch


def check_rel_indices(where: str, rels: np.ndarray, n: int) -> None:
    """InputError naming `where` unless each (M,3) relation joins two distinct of the n objects (no index wraps)."""
    if rels.size and ((rels[:, :2] < 0).any() or (rels[:, :2] >= n).any() or (rels[:, 0] == rels[:, 1]).any()):
        raise InputError(where, "rels index an object outside the image or relate an object to itself",
                         f"subject != object, indices in [0, {n})")


def _check_image(k: int, img: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Validate one image dict; return its boxes (N,4) and rels (M,3) as numpy."""
    where = f"image {k} ({img.get('image_id', '?')})"
    for key in ("boxes", "labels", "obj_features", "rels", "width", "height"):
        if key not in img:
            raise InputError(where, f"missing key {key!r}",
                             "a dict from components.data.store.scene_graphs")
    boxes = np.asarray(img["boxes"], dtype=np.float32).reshape(-1, 4)
    n = len(img["labels"])
    if boxes.shape[0] != n or len(img["obj_features"]) != n:
        raise InputError(where, f"{boxes.shape[0]} boxes, {n} labels, {len(img['obj_features'])} features",
                         "one box, label and feature per object")
    rels = np.asarray(img["rels"], dtype=np.int64).reshape(-1, 3)
    check_rel_indices(where, rels, n)
    return boxes, rels


def _collate_objects(images: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Concatenate the objects of `images` (features, boxes, labels, image index, image sizes)."""
    if len(images) == 0:
        raise InputError("images", "empty list", "at least one image")
    dims = {np.asarray(img["obj_features"]).reshape(len(img["labels"]), -1).shape[1]
            for img in images if len(img["labels"])}
    if len(dims) > 1:
        raise InputError("images", f"object feature dims differ across images: {sorted(dims)}", "one dim")
    dim = dims.pop() if dims else 0
    feats = [np.asarray(img["obj_features"], dtype=np.float32).reshape(len(img["labels"]), dim) for img in images]
    counts = [len(img["labels"]) for img in images]
    return {
        "obj_features": torch.from_numpy(np.concatenate(feats, 0)),
        "boxes": torch.from_numpy(np.concatenate(
            [np.asarray(img["boxes"], dtype=np.float32).reshape(-1, 4) for img in images], 0)),
        "labels": torch.from_numpy(np.concatenate(
            [np.asarray(img["labels"], dtype=np.int64).reshape(-1) for img in images], 0)),
        "obj_to_img": torch.repeat_interleave(torch.arange(len(images)), torch.tensor(counts)),
        "image_sizes": torch.tensor([[float(img["width"]), float(img["height"])] for img in images]),
    }


def _finish(objects: dict[str, torch.Tensor], pairs: list[np.ndarray], labels: list[np.ndarray],
            counts: list[int]) -> SGBatch:
    """Shift per-image pair indices to global object indices and build the SGBatch."""
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    glob = [p + off for p, off in zip(pairs, offsets)]
    return SGBatch(
        pairs=torch.from_numpy(np.concatenate(glob, 0).reshape(-1, 2).astype(np.int64)),
        pair_to_img=torch.from_numpy(np.repeat(np.arange(len(pairs)), [len(p) for p in pairs]).astype(np.int64)),
        pair_labels=torch.from_numpy(np.concatenate(labels, 0).astype(np.int64)),
        **objects)


def _check_label_map(label_map: np.ndarray | None, max_pred: int) -> np.ndarray | None:
    if label_map is None:
        return None
    lm = np.asarray(label_map)
    if lm.ndim != 1 or not np.issubdtype(lm.dtype, np.integer) or lm[0] != 0 or (lm < -1).any():
        raise InputError("label_map", "must be a 1-D int array with map[0] = 0 and values >= -1",
                         "length C_pred + 1, training label or -1 per predicate id")
    if max_pred >= len(lm):
        raise InputError("label_map", f"length {len(lm)} but a GT predicate id is {max_pred}",
                         f"length >= {max_pred + 1}")
    return lm.astype(np.int64)


def sample_pairs(images: Sequence[dict[str, Any]], rng: np.random.Generator, max_fg_per_image: int = 64,
                 max_bg_per_image: int = 128, label_map: np.ndarray | None = None) -> SGBatch:
    """Training pairs of `images`: GT pairs (up to the cap) plus sampled background pairs."""
    if max_fg_per_image < 0 or max_bg_per_image < 0:
        raise InputError("max_fg_per_image/max_bg_per_image", "negative cap", "caps >= 0")
    checked = [_check_image(k, img) for k, img in enumerate(images)]
    lm = _check_label_map(label_map, max((int(r[:, 2].max()) for _, r in checked if r.size), default=0))
    objects = _collate_objects(images)
    pairs, labels, counts = [], [], []
    for img, (_, rels) in zip(images, checked):
        n = len(img["labels"])
        counts.append(n)
        fg_pairs, fg_labels = _foreground(rels, n, rng, lm)
        if len(fg_pairs) > max_fg_per_image:
            # Pairs the stage keeps first (random order within each group), then ignored ones.
            order = np.lexsort((rng.random(len(fg_pairs)), fg_labels < 0))[:max_fg_per_image]
            fg_pairs, fg_labels = fg_pairs[order], fg_labels[order]
        bg = _background(rels, n, rng, max_bg_per_image)
        pairs.append(np.concatenate([fg_pairs, bg], 0))
        labels.append(np.concatenate([fg_labels, np.zeros(len(bg), dtype=np.int64)]))
    return _finish(objects, pairs, labels, counts)


def _foreground(rels: np.ndarray, n: int, rng: np.random.Generator,
                lm: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Unique GT pairs and one randomly drawn (mapped) predicate each."""
    if rels.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    mapped = rels[:, 2] if lm is None else lm[rels[:, 2]]
    key = rels[:, 0] * n + rels[:, 1]
    uniq, inv = np.unique(key, return_inverse=True)
    # Random priority per relation; kept predicates (mapped >= 0) always beat ignored ones.
    prio = rng.random(len(rels)) + (mapped >= 0)
    order = np.lexsort((-prio, inv))  # within each pair, highest priority first
    first = order[np.searchsorted(inv[order], np.arange(len(uniq)))]
    return np.stack([uniq // n, uniq % n], 1), mapped[first].astype(np.int64)


def _background(rels: np.ndarray, n: int, rng: np.random.Generator, cap: int) -> np.ndarray:
    """Up to `cap` ordered pairs i != j without any GT relation, drawn without replacement."""
    if n < 2 or cap == 0:
        return np.zeros((0, 2), np.int64)
    all_keys = np.arange(n * n)
    all_keys = all_keys[all_keys // n != all_keys % n]
    if rels.size:
        all_keys = np.setdiff1d(all_keys, rels[:, 0] * n + rels[:, 1], assume_unique=False)
    if len(all_keys) > cap:
        all_keys = rng.choice(all_keys, size=cap, replace=False)
    return np.stack([all_keys // n, all_keys % n], 1).astype(np.int64)


def all_pairs(images: Sequence[dict[str, Any]]) -> SGBatch:
    """Evaluation pairs: every ordered pair i != j of each image; label = the first GT predicate or 0."""
    checked = [_check_image(k, img) for k, img in enumerate(images)]
    objects = _collate_objects(images)
    pairs, labels, counts = [], [], []
    for img, (_, rels) in zip(images, checked):
        n = len(img["labels"])
        counts.append(n)
        ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        keep = ii != jj
        p = np.stack([ii[keep], jj[keep]], 1).astype(np.int64)
        lab = np.zeros((n, n), np.int64)
        if rels.size:
            _, first = np.unique(rels[:, 0] * n + rels[:, 1], return_index=True)
            lab[rels[first, 0], rels[first, 1]] = rels[first, 2]
        pairs.append(p)
        labels.append(lab[p[:, 0], p[:, 1]] if len(p) else np.zeros(0, np.int64))
    return _finish(objects, pairs, labels, counts)
